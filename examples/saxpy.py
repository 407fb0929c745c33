"""SAXPY on a remote GPU through gpupool's runtime API.

gpupool run -- python examples/saxpy.py                      # embedded local daemon
GPUPOOL_DAEMONS=host:7001 python examples/saxpy.py           # a running daemon
"""

import numpy as np

import gpupool
from gpupool import runtime as rt

gpupool.connect()  # the daemons named by GPUPOOL_DAEMONS
assert rt.getDeviceCount() >= 1
rt.setDevice(0)
n = 1 << 20
x = np.random.rand(n).astype(np.float32)
y = np.random.rand(n).astype(np.float32)
dx, dy = rt.malloc(x.nbytes), rt.malloc(y.nbytes)
rt.memcpy(dx, x.ctypes.data, x.nbytes, rt.memcpyHostToDevice)
rt.memcpy(dy, y.ctypes.data, y.nbytes, rt.memcpyHostToDevice)
mod = gpupool.Module.from_source(r"""
extern "C" __global__ void saxpy(float a, const float* x, float* y, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = a * x[i] + y[i];
}""")
saxpy = mod.get_function("saxpy")
saxpy((n // 256,), (256,), (np.float32(2.0), dx, dy, np.int32(n)))  # asynchronous
out = np.empty_like(y)
rt.memcpy(out.ctypes.data, dy, y.nbytes, rt.memcpyDeviceToHost)  # synchronizes
np.testing.assert_allclose(out, 2 * x + y, rtol=1e-6)
name = rt.getDeviceProperties(0)["name"].decode()
print(f"saxpy on {name}: {n} elements OK, {gpupool.stats().round_trips} round trips")
