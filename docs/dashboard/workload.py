"""One program of the dashboard's workload (``render.py``), run under ``gpupool run``.

``workload.py KIND SECONDS``: ``copy`` copies 8 MiB both ways, ``ops`` runs small array
operations, ``launch`` launches a kernel, each in a loop for SECONDS; ``crash`` launches a
kernel that writes where it must not (its worker dies).
"""

from __future__ import annotations

import sys
import time

import numpy as np

import gpupool
from gpupool import runtime as rt

KERNELS = r"""
extern "C" __global__ void scale(float* x, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] *= 1.0001f;
}
extern "C" __global__ void poke(int* p) { p[threadIdx.x] = 42; }
"""


def main(kind: str, seconds: float) -> None:
    gpupool.connect()
    deadline = time.monotonic() + seconds
    size = 8 << 20
    host = np.ones(size // 4, np.float32)
    ptr = rt.malloc(size)
    module = gpupool.Module.from_source(KERNELS)
    if kind == "crash":
        module.get_function("poke")((1,), (32,), (0x10,))
        try:
            rt.deviceSynchronize()
        except gpupool.CUDARuntimeError as exc:
            print(f"crashed as meant: {exc.name}")
        return
    scale = module.get_function("scale")
    import gpupool.cupy as cp

    while time.monotonic() < deadline:
        if kind == "copy":
            rt.memcpy(ptr, host.ctypes.data, size, rt.memcpyHostToDevice)
            rt.memcpy(host.ctypes.data, ptr, size, rt.memcpyDeviceToHost)
        elif kind == "ops":
            x = cp.arange(4096, dtype=cp.float32)
            for _ in range(50):
                x = x * 1.0001 + 1
            float(x.sum())
        else:
            for _ in range(200):  # small launches: their rate, not the kernel's work
                scale((4,), (256,), (ptr, np.int32(1024)))
            rt.deviceSynchronize()


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]))
