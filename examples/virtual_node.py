"""Data-parallel least squares over every device the program is given: a plain CuPy program.

gpupool run -n 16 --policy spread -- python examples/virtual_node.py   # 16 GPUs of a pool
python examples/virtual_node.py                                          # under real CuPy

Each device holds a shard of the rows of X and y. A training step computes each shard's
gradient X_i^T (X_i w - y_i) on its device, sums the gradients with an NCCL all-reduce (the
devices' workers send the gradient around a ring among themselves: nothing passes through
this process), and updates every device's copy of w. No step waits for a device, so under
gpupool a step costs no round trip; the result is checked against NumPy running the same
steps on the whole data.
"""

import cupy as cp
import numpy as np
from cupy.cuda import nccl

STEPS, FEATURES, ROWS_PER_DEVICE = 40, 32, 512

devices = cp.cuda.runtime.getDeviceCount()
rng = np.random.default_rng(0)
x = rng.standard_normal((devices * ROWS_PER_DEVICE, FEATURES))
true_w = rng.standard_normal(FEATURES)
y = x @ true_w + 0.01 * rng.standard_normal(len(x))
rate = 1.0 / np.linalg.norm(x, 2) ** 2  # a step that converges: 1 / the largest eigenvalue

comms = nccl.NcclCommunicator.initAll(devices)
shards = []
for device, (xs, ys) in enumerate(
    zip(np.array_split(x, devices), np.array_split(y, devices), strict=True)
):
    with cp.cuda.Device(device):
        shards.append((cp.asarray(xs), cp.asarray(ys), cp.zeros(FEATURES), cp.empty(FEATURES)))


def step() -> None:
    nccl.groupStart()
    for device, (xs, ys, w, gradient) in enumerate(shards):
        with cp.cuda.Device(device):
            local = xs.T @ (xs @ w - ys)
            comms[device].allReduce(
                local.data.ptr,
                gradient.data.ptr,
                FEATURES,
                nccl.NCCL_FLOAT64,
                nccl.NCCL_SUM,
                cp.cuda.get_current_stream().ptr,
            )
    nccl.groupEnd()
    for device, (_xs, _ys, w, gradient) in enumerate(shards):
        with cp.cuda.Device(device):
            w -= rate * gradient


try:  # under gpupool, count the round trips a step takes (none: nothing waits)
    from gpupool import stats
except ImportError:
    stats = None

step()  # the first step also opens the ring's links
before = stats().round_trips if stats else 0
for _ in range(STEPS - 1):
    step()
trips = (stats().round_trips - before) / (STEPS - 1) if stats else 0.0

want = np.zeros(FEATURES)
for _ in range(STEPS):
    want -= rate * (x.T @ (x @ want - y))
results = [cp.asnumpy(w) for _xs, _ys, w, _g in shards]
agree = all(np.allclose(result, want, rtol=1e-9, atol=1e-12) for result in results)
error = float(np.abs(results[0] - true_w).max())
print(f"{STEPS} steps on {devices} device(s): {trips:.1f} round trips a step")
print(f"largest error against the true weights {error:.2e}")
print(f"equal to NumPy's on every device: {agree}")
if not agree:
    raise SystemExit(1)
