"""Warp-level CUDA: shuffle reductions, votes and cooperative-group tiles in RawKernels.

A plain CuPy program, checked against NumPy (on the emulator, a warp's lanes meet at each
warp operation as on a GPU).
"""

import cupy as cp
import numpy as np

source = r"""
#include <cooperative_groups.h>
#include <cooperative_groups/reduce.h>
namespace cg = cooperative_groups;

extern "C" __global__ void block_sum(const float* x, float* out, int n) {
    __shared__ float partial[32];
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    float v = i < n ? x[i] : 0.0f;
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffff, v, offset);
    if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = v;
    __syncthreads();
    if (threadIdx.x < 32) {
        v = threadIdx.x < blockDim.x / 32 ? partial[threadIdx.x] : 0.0f;
        for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffff, v, offset);
        if (threadIdx.x == 0) atomicAdd(out, v);
    }
}

extern "C" __global__ void count_positive(const float* x, unsigned* out, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    unsigned votes = __ballot_sync(0xffffffff, i < n && x[i] > 0.0f);
    if (threadIdx.x % 32 == 0) atomicAdd(out, __popc(votes));
}

extern "C" __global__ void tile_max(const int* x, int* out) {
    cg::thread_block block = cg::this_thread_block();
    cg::thread_block_tile<8> tile = cg::tiled_partition<8>(block);
    int best = cg::reduce(tile, x[block.thread_rank()], cg::greater<int>());
    if (tile.thread_rank() == 0) out[tile.meta_group_rank()] = best;
}
"""
module = cp.RawModule(code=source)
n = 10_000
host = np.random.default_rng(9).standard_normal(n).astype(np.float32)
x = cp.asarray(host)

total = cp.zeros(1, cp.float32)
module.get_function("block_sum")(((n + 255) // 256,), (256,), (x, total, np.int32(n)))
np.testing.assert_allclose(float(total[0]), host.sum(dtype=np.float64), rtol=1e-4)
print(f"sum {float(total[0]):.2f}")

positive = cp.zeros(1, cp.uint32)
module.get_function("count_positive")(((n + 255) // 256,), (256,), (x, positive, np.int32(n)))
assert int(positive[0]) == int((host > 0).sum())
print("positive", int(positive[0]))

values = np.random.default_rng(2).integers(0, 1000, 64).astype(np.int32)
best = cp.zeros(8, cp.int32)
module.get_function("tile_max")((1,), (64,), (cp.asarray(values), best))
assert cp.asnumpy(best).tolist() == values.reshape(8, 8).max(axis=1).tolist()
print("tile maxima", cp.asnumpy(best).tolist())
print("ok")
