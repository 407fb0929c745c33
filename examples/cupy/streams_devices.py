"""Streams, events and several devices: a plain CuPy program."""

import cupy as cp
import numpy as np

assert cp.cuda.runtime.getDeviceCount() >= 2, "this program needs two devices"

stream = cp.cuda.Stream(non_blocking=True)
start, end = cp.cuda.Event(), cp.cuda.Event()
with stream:
    start.record()
    a = cp.arange(1 << 16, dtype=cp.float32)
    b = cp.sqrt(a) * 2
    end.record()
end.synchronize()
assert end.done
elapsed = cp.cuda.get_elapsed_time(start, end)
assert elapsed >= 0
stream.synchronize()
np.testing.assert_allclose(b.get(), np.sqrt(np.arange(1 << 16, dtype=np.float32)) * 2, rtol=1e-6)

# A second stream waits for an event recorded on the first.
other = cp.cuda.Stream()
with stream:
    c = b + 1
    ready = stream.record()
other.wait_event(ready)
with other:
    d = c * 3
other.synchronize()
np.testing.assert_allclose(
    d.get(), (np.sqrt(np.arange(1 << 16, dtype=np.float32)) * 2 + 1) * 3, rtol=1e-6
)
print("streams", f"{float(d[:10].sum()):.3f}")

# One array on each device, each computed where it lives.
sums = []
for dev in range(2):
    with cp.cuda.Device(dev):
        v = cp.full(1000, dev + 1, dtype=cp.int64)
        assert v.device.id == dev
        sums.append(int((v * v).sum()))
        cp.cuda.Device().synchronize()
assert cp.cuda.Device().id == 0
assert sums == [1000, 4000]
print("devices", sums)

pool = cp.get_default_memory_pool()
before = pool.used_bytes()
tmp = cp.empty(1 << 20, dtype=cp.uint8)
assert pool.used_bytes() >= before + (1 << 20)
del tmp
pool.free_all_blocks()
print("ok")
