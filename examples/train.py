"""Data-parallel logistic regression on every GPU the program sees: a plain CuPy program.

gpupool run -n 2 -- python examples/train.py     # two GPUs from a pool (an embedded one here)
python examples/train.py                         # the same program under real CuPy

Each device holds a shard of the data and computes the gradient of its shard; the host sums
them and updates the weights, as a hand-rolled data-parallel training step does.
"""

import cupy as cp
import numpy as np

devices = cp.cuda.runtime.getDeviceCount()
rng = np.random.default_rng(0)
samples, features = 20_000, 32
true_w = rng.standard_normal(features)
x = rng.standard_normal((samples, features)).astype(np.float32)
y = (x @ true_w + 0.1 * rng.standard_normal(samples) > 0).astype(np.float32)

shards = []
for device, (xs, ys) in enumerate(
    zip(np.array_split(x, devices), np.array_split(y, devices), strict=True)
):
    with cp.cuda.Device(device):
        shards.append((cp.asarray(xs), cp.asarray(ys)))

w = np.zeros(features, np.float32)
for step in range(101):
    gradients, losses = [], []
    for device, (xs, ys) in enumerate(shards):
        with cp.cuda.Device(device):
            p = 1 / (1 + cp.exp(-(xs @ cp.asarray(w))))
            gradients.append(xs.T @ (p - ys))
            losses.append(-(ys * cp.log(p + 1e-7) + (1 - ys) * cp.log(1 - p + 1e-7)).sum())
    w -= 0.5 * sum(cp.asnumpy(g) for g in gradients) / samples
    if step % 25 == 0:
        print(f"step {step:3d}  loss {sum(float(loss) for loss in losses) / samples:.4f}")

accuracy = float(((x @ w > 0) == (y > 0)).mean())
print(f"accuracy {accuracy:.3f} with {devices} device(s)")
assert accuracy > 0.95
