"""Custom kernels: ElementwiseKernel and ReductionKernel with preambles, RawKernel and
RawModule with shared memory. A plain CuPy program, checked against NumPy."""

import cupy as cp
import numpy as np

squared_diff = cp.ElementwiseKernel(
    "T x, T y, T scale",
    "T z",
    "z = scale * sq(x - y)",
    "squared_diff",
    preamble="template <typename T> __device__ T sq(T v) { return v * v; }",
)
a = cp.arange(12, dtype=cp.float32).reshape(3, 4)
b = cp.asarray([1.0, 2.0, 3.0, 4.0], dtype=cp.float32)  # broadcast over rows
got = squared_diff(a, b, cp.float32(0.5))
want = 0.5 * (np.arange(12, dtype=np.float32).reshape(3, 4) - np.arange(1, 5)) ** 2
assert got.dtype == cp.float32
np.testing.assert_allclose(got.get(), want)
print("elementwise", f"{float(got.sum()):.2f}")

out = cp.empty((3, 4), dtype=cp.float64)
squared_diff(a.astype(cp.float64), b.astype(cp.float64), 2.0, out)
np.testing.assert_allclose(out.get(), 4 * want)

l2 = cp.ReductionKernel(
    "T x",
    "T y",
    "square(x)",
    "a + b",
    "y = my_sqrt(a)",
    "0",
    "l2norm",
    preamble="__device__ double square(double v) { return v * v; }\n"
    "__device__ double my_sqrt(double v) { return sqrt(v); }",
)
m = cp.arange(24, dtype=cp.float64).reshape(4, 6) - 10
hm = np.arange(24, dtype=np.float64).reshape(4, 6) - 10
np.testing.assert_allclose(l2(m).get(), np.linalg.norm(hm))
np.testing.assert_allclose(l2(m, axis=1).get(), np.linalg.norm(hm, axis=1))
np.testing.assert_allclose(
    l2(m, axis=0, keepdims=True).get(), np.linalg.norm(hm, axis=0, keepdims=True)
)
print("reduction", f"{float(l2(m)):.4f}")

block_sum = cp.RawKernel(
    r"""
extern "C" __global__ void block_sum(const float* x, float* out, int n) {
    extern __shared__ float partial[];
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    partial[threadIdx.x] = i < n ? x[i] : 0.0f;
    __syncthreads();
    for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
        if (threadIdx.x < stride) partial[threadIdx.x] += partial[threadIdx.x + stride];
        __syncthreads();
    }
    if (threadIdx.x == 0) out[blockIdx.x] = partial[0];
}""",
    "block_sum",
)
n, threads = 10_000, 128
blocks = (n + threads - 1) // threads
x = cp.arange(n, dtype=cp.float32) % 7
partials = cp.zeros(blocks, dtype=cp.float32)
block_sum((blocks,), (threads,), (x, partials, cp.int32(n)), shared_mem=threads * 4)
assert float(partials.sum()) == float((np.arange(n) % 7).sum())
print("rawkernel", float(partials.sum()))

module = cp.RawModule(
    code=r"""
extern "C" {
__global__ void scale(double* v, double k, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) v[i] *= k;
}
__global__ void tile_transpose(const int* in, int* out, int rows, int cols) {
    __shared__ int tile[16][17];
    int c = blockIdx.x * 16 + threadIdx.x, r = blockIdx.y * 16 + threadIdx.y;
    if (r < rows && c < cols) tile[threadIdx.y][threadIdx.x] = in[r * cols + c];
    __syncthreads();
    int tc = blockIdx.y * 16 + threadIdx.x, tr = blockIdx.x * 16 + threadIdx.y;
    if (tr < cols && tc < rows) out[tr * rows + tc] = tile[threadIdx.x][threadIdx.y];
}
}"""
)
v = cp.ones(100, dtype=cp.float64)
module.get_function("scale")((1,), (128,), (v, 2.5, cp.int32(100)))
assert float(v.sum()) == 250.0
rows, cols = 40, 23
src = cp.arange(rows * cols, dtype=cp.int32).reshape(rows, cols)
dst = cp.empty((cols, rows), dtype=cp.int32)
grid = ((cols + 15) // 16, (rows + 15) // 16)
module.get_function("tile_transpose")(grid, (16, 16), (src, dst, cp.int32(rows), cp.int32(cols)))
cp.testing.assert_array_equal(dst, src.get().T)
print("rawmodule", int(dst[5, 7]))
print("ok")
