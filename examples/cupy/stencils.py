"""Image-style stencils with slicing: a 3x3 convolution, an edge-padded blur, strided and
reversed views, boolean-mask thresholds, and a Monte-Carlo estimate of pi with cupy.random.

Runs as is under real CuPy, or on remote GPUs with ``gpupool run -- python stencils.py``.
"""

import cupy as cp
import numpy as np

rng = np.random.default_rng(5)
image = rng.random((64, 48)).astype(np.float32)
laplace = np.array([[0, -1, 0], [-1, 4, -1], [0, -1, 0]], np.float32)


def convolve(xp, image, kernel):
    kh, kw = kernel.shape
    rows, cols = image.shape[0] - kh + 1, image.shape[1] - kw + 1
    out = xp.zeros((rows, cols), dtype=image.dtype)
    for i in range(kh):
        for j in range(kw):
            out += kernel[i, j] * image[i : i + rows, j : j + cols]
    return out


def blur(xp, image):
    padded = xp.zeros((image.shape[0] + 2, image.shape[1] + 2), image.dtype)
    padded[1:-1, 1:-1] = image
    padded[0, 1:-1], padded[-1, 1:-1] = image[0], image[-1]
    padded[:, 0], padded[:, -1] = padded[:, 1], padded[:, -2]
    total = sum(
        padded[i : i + image.shape[0], j : j + image.shape[1]] for i in range(3) for j in range(3)
    )
    return total / 9


def threshold(xp, image):
    out = image.copy()
    out[out > 0.8] = 1
    out[out < 0.2] = -out[out < 0.2]
    return out[::-2, 1::3].T[::-1]


device_image = cp.asarray(image)
for name, function in (
    ("convolve", lambda xp, im: convolve(xp, im, xp.asarray(laplace))),
    ("blur", blur),
    ("threshold", threshold),
):
    got, want = function(cp, device_image), function(np, image)
    assert got.dtype == want.dtype and got.shape == want.shape, (name, got.dtype, want.dtype)
    cp.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=name)
    print(name, got.shape, got.dtype)

edges = cp.abs(convolve(cp, device_image, cp.asarray(laplace))) > 0.5
assert int(edges.sum()) == int((np.abs(convolve(np, image, laplace)) > 0.5).sum())

cp.random.seed(42)
samples = cp.random.rand(2, 200_000)
inside = (samples**2).sum(axis=0) <= 1
pi = 4 * inside.mean()
assert pi.ndim == 0 and inside.dtype == cp.bool_
assert abs(float(pi) - np.pi) < 0.02, float(pi)
print("pi within 0.02")
print("ok")
