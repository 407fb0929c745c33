"""A compute-bound loop (4096 x 4096 float32 matmuls): its time through gpupool against native
CuPy is the remoting cost of a program that keeps the GPU busy.

python matmul_loop.py                      # native, real CuPy
gpupool run -- python matmul_loop.py       # through the shim
"""

import sys
import time

import cupy as cp

n = int(sys.argv[1]) if len(sys.argv) > 1 else 4096
repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 50
a = cp.random.rand(n, n, dtype=cp.float32)
b = cp.random.rand(n, n, dtype=cp.float32)
c = a @ b  # warm-up: library handles, kernels
cp.cuda.Device().synchronize()
begin = time.perf_counter()
for _ in range(repeats):
    c = a @ b
cp.cuda.Device().synchronize()
seconds = time.perf_counter() - begin
print(
    f"matmul {n}x{n} x{repeats}: {seconds:.3f} s, {2 * n**3 * repeats / seconds / 1e12:.1f} TFLOP/s"
)
