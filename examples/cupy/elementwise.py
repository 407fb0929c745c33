"""Elementwise math, broadcasting, indexing and reductions: a plain CuPy program.

Runs as is under real CuPy, or on remote GPUs with ``gpupool run -- python elementwise.py``.
Every result is checked against NumPy; the printed lines are the same under both.
"""

import cupy as cp
import numpy as np

x = cp.linspace(-3, 3, 1001, dtype=cp.float32)
h = cp.asnumpy(x)
grid = x.reshape(77, 13)
hgrid = h.reshape(77, 13)
checks = {
    "pythagoras": (cp.sin(x) ** 2 + cp.cos(x) ** 2, np.sin(h) ** 2 + np.cos(h) ** 2),
    "gauss_tanh": (cp.exp(-x * x) * cp.tanh(x), np.exp(-h * h) * np.tanh(h)),
    "where_clip": (
        cp.where(x > 0, cp.sqrt(cp.abs(x)), cp.clip(x, -1, 0.5)),
        np.where(h > 0, np.sqrt(np.abs(h)), np.clip(h, -1, 0.5)),
    ),
    "broadcast": (grid + cp.arange(13, dtype=cp.float32), hgrid + np.arange(13, dtype=np.float32)),
    "compare": ((x >= 0.5) | (x < -2), (h >= 0.5) | (h < -2)),
    "transpose": (grid.T * 2 - 1, hgrid.T * 2 - 1),
    "slices": (grid[::3, 1:-1], hgrid[::3, 1:-1]),
    "fancy": (x[cp.asarray([5, 0, 999, 5])], h[[5, 0, 999, 5]]),
    "mask": (x[x > 2.5], h[h > 2.5]),
    "maximum": (cp.maximum(x, 0.25), np.maximum(h, 0.25)),
    "astype": (cp.floor(x * 10).astype(cp.int32), np.floor(h * 10).astype(np.int32)),
}
for name, (got, want) in checks.items():
    assert got.dtype == want.dtype, (name, got.dtype, want.dtype)
    assert got.shape == want.shape, (name, got.shape, want.shape)
    np.testing.assert_allclose(cp.asnumpy(got), want, rtol=1e-5, atol=1e-6, err_msg=name)
    print(name, got.dtype, got.shape, f"{float(got.astype(cp.float64).sum()):.3f}")

reductions = {
    "sum0": (grid.sum(axis=0), hgrid.sum(axis=0)),
    "mean1": (grid.mean(axis=1), hgrid.mean(axis=1)),
    "std": (grid.std(), hgrid.std()),
    "var_keep": (cp.var(grid, axis=1, keepdims=True), np.var(hgrid, axis=1, keepdims=True)),
    "max": (cp.max(grid, axis=0), np.max(hgrid, axis=0)),
    "min": (grid.min(), hgrid.min()),
    "argmax": (cp.argmax(grid, axis=1), np.argmax(hgrid, axis=1)),
    "argmin": (grid.argmin(), hgrid.argmin()),
    "prod": (cp.prod(grid[:2, :4] + 4, axis=1), np.prod(hgrid[:2, :4] + 4, axis=1)),
    "cumsum": (cp.cumsum(x[:50]), np.cumsum(h[:50])),
    "all_any": (
        cp.stack([cp.all(x > -4), cp.any(x > 2.99)]),
        np.stack([np.all(h > -4), np.any(h > 2.99)]),
    ),
}
for name, (got, want) in reductions.items():
    np.testing.assert_allclose(cp.asnumpy(got), want, rtol=1e-4, atol=1e-5, err_msg=name)
    print(name, got.shape, f"{float(cp.asnumpy(got).astype(np.float64).sum()):.3f}")

# In-place updates, setitem and fill.
y = cp.zeros((4, 5), dtype=cp.float64)
y += 1
y[1] = 7
y[:, 2] *= 3
y[y > 5] = -1
y[0, 0] = cp.pi
z = cp.empty(3, dtype=cp.int16)
z.fill(9)
expected = np.ones((4, 5))
expected[1] = 7
expected[:, 2] *= 3
expected[expected > 5] = -1
expected[0, 0] = np.pi
np.testing.assert_allclose(y.get(), expected)
assert cp.asnumpy(z).tolist() == [9, 9, 9]
assert [float(row.sum()) for row in y] == [float(r.sum()) for r in expected]
print("inplace", f"{float(y.sum()):.4f}", int(z.sum()))

# Joining, and CuPy's refusal of implicit transfers.
joined = cp.concatenate([x[:3], cp.ones(2, dtype=cp.float32)])
np.testing.assert_allclose(joined.get(), np.concatenate([h[:3], np.ones(2, np.float32)]))
try:
    np.asarray(x)
except TypeError:
    print("implicit transfer refused")
else:
    raise AssertionError("np.asarray of a device array should raise TypeError")
assert cp.get_array_module(x) is cp and cp.get_array_module(h) is np
print("ok")
