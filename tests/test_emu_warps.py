"""Emulated warps: lanes of a warp meet at warp-level operations (shuffles, votes, matches,
reductions, ``__syncwarp``) and cooperative-group tiles, so warp-synchronous kernels give a
GPU's results; kernels' own typedefs of fixed-width names compile. Real g++ compiles, results
checked against NumPy; one module, compiled once.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from gpupool.errors import CompileError, CUDARuntimeError
from gpupool.server.backends.emu_kernels import EmuModule

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")

FULL = 0xFFFFFFFF

WARPS = r"""
#include <cooperative_groups.h>
#include <cooperative_groups/reduce.h>
namespace cg = cooperative_groups;

typedef unsigned long long uint64_t;  // as CuPy-style kernels declare it for NVRTC
typedef int int32_t;

extern "C" __global__ void warp_sum(const float* x, float* out) {
    unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
    float v = x[i];
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffff, v, offset);
    if (threadIdx.x % 32 == 0) out[i / 32] = v;
}

extern "C" __global__ void warp_scan(const int* x, int* out) {
    unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
    unsigned lane = threadIdx.x % 32;
    int v = x[i];
    for (unsigned d = 1; d < 32; d *= 2) {
        int n = __shfl_up_sync(0xffffffff, v, d);
        if (lane >= d) v += n;
    }
    out[i] = v;
}

extern "C" __global__ void votes(const int* x, unsigned* ballots, int* any_all, unsigned* active) {
    unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
    unsigned w = threadIdx.x / 32;
    unsigned mask = __activemask();
    unsigned b = __ballot_sync(mask, x[i] > 0);
    int a = __any_sync(mask, x[i] > 5);
    int l = __all_sync(mask, x[i] > -100);
    if (threadIdx.x % 32 == 0) {
        ballots[w] = b;
        any_all[2 * w] = a;
        any_all[2 * w + 1] = l;
        active[w] = mask;
    }
}

extern "C" __global__ void segments(const double* x, double* sums, double* broadcast) {
    unsigned i = threadIdx.x;
    double v = x[i];
    for (int m = 4; m > 0; m /= 2) v += __shfl_xor_sync(0xffffffff, v, m, 8);
    sums[i] = v;
    broadcast[i] = __shfl_sync(0xffffffff, x[i], 3, 16);
}

extern "C" __global__ void match_reduce(const int* x, unsigned* matches, int* total, int* low) {
    unsigned i = threadIdx.x;
    matches[i] = __match_any_sync(0xffffffff, x[i]);
    int sum = __reduce_add_sync(0xffffffff, x[i]);
    int least = __reduce_min_sync(0xffffffff, x[i]);
    __syncwarp();
    if (i == 0) {
        *total = sum;
        *low = least;
    }
}

extern "C" __global__ void tiles(const int* x, int* sums, int* ranks) {
    cg::thread_block block = cg::this_thread_block();
    cg::thread_block_tile<16> tile = cg::tiled_partition<16>(block);
    unsigned i = block.thread_rank();
    int v = cg::reduce(tile, x[i], cg::plus<int>());
    tile.sync();
    block.sync();
    if (tile.thread_rank() == 0) sums[tile.meta_group_rank()] = v;
    ranks[i] = tile.thread_rank() + 100 * tile.shfl_down(int(tile.thread_rank()), 1);
}

extern "C" __global__ void wide(const uint64_t* x, uint64_t* out) {
    int32_t lane = threadIdx.x % 32;
    uint64_t v = x[threadIdx.x];
    out[threadIdx.x] = __shfl_sync(0xffffffff, v, (lane + 1) % 32) * 3ull;
}

extern "C" __global__ void deadlock(int* x) {
    if (threadIdx.x == 0) {
        __syncthreads();
    } else {
        __syncwarp();
    }
    x[threadIdx.x] = 1;
}
"""


def ptr(array: np.ndarray) -> bytes:
    return np.uint64(array.ctypes.data).tobytes()


@pytest.fixture(scope="module")
def module(tmp_path_factory: pytest.TempPathFactory) -> EmuModule:
    cache: Path = tmp_path_factory.mktemp("warps-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GPUPOOL_CACHE_DIR", str(cache))
        return EmuModule.from_source(WARPS)


def launch(module: EmuModule, name: str, blocks: int, threads: int, *args: np.ndarray) -> None:
    module.get_function(name).launch((blocks, 1, 1), (threads, 1, 1), 0, [ptr(a) for a in args])


def test_shuffle_down_reduces_each_warp(module: EmuModule) -> None:
    x = np.random.default_rng(1).standard_normal(4 * 128).astype(np.float32)
    out = np.zeros(16, np.float32)
    launch(module, "warp_sum", 4, 128, x, out)
    np.testing.assert_allclose(out, x.reshape(16, 32).sum(axis=1), rtol=1e-5)


def test_shuffle_up_scans_each_warp(module: EmuModule) -> None:
    x = np.arange(96, dtype=np.int32) % 7
    out = np.zeros_like(x)
    launch(module, "warp_scan", 1, 96, x, out)
    np.testing.assert_array_equal(out, np.cumsum(x.reshape(3, 32), axis=1).ravel())


def test_votes_and_the_active_lanes_of_a_partial_warp(module: EmuModule) -> None:
    x = np.array([(-1) ** i * (i % 9) for i in range(40)], dtype=np.int32)
    ballots = np.zeros(2, np.uint32)
    any_all = np.zeros(4, np.int32)
    active = np.zeros(2, np.uint32)
    launch(module, "votes", 1, 40, x, ballots, any_all, active)
    expected = [
        sum(1 << lane for lane in range(n) if x[w * 32 + lane] > 0) for w, n in ((0, 32), (1, 8))
    ]
    assert ballots.tolist() == expected
    assert active.tolist() == [FULL, 0xFF]
    assert any_all.tolist() == [1, 1, int((x[32:] > 5).any()), 1]


def test_xor_butterflies_and_broadcasts_stay_in_their_segments(module: EmuModule) -> None:
    x = np.arange(32, dtype=np.float64) ** 2
    sums = np.zeros_like(x)
    broadcast = np.zeros_like(x)
    launch(module, "segments", 1, 32, x, sums, broadcast)
    np.testing.assert_allclose(sums, np.repeat(x.reshape(4, 8).sum(axis=1), 8))
    np.testing.assert_allclose(broadcast, np.repeat(x[[3, 19]], 16))


def test_match_and_warp_reductions(module: EmuModule) -> None:
    x = (np.arange(32, dtype=np.int32) % 3) - 1
    matches = np.zeros(32, np.uint32)
    total = np.zeros(1, np.int32)
    low = np.zeros(1, np.int32)
    launch(module, "match_reduce", 1, 32, x, matches, total, low)
    for lane in range(32):
        assert matches[lane] == sum(1 << o for o in range(32) if x[o] == x[lane])
    assert (total[0], low[0]) == (x.sum(), x.min())


def test_cooperative_group_tiles(module: EmuModule) -> None:
    x = np.arange(64, dtype=np.int32)
    sums = np.zeros(4, np.int32)
    ranks = np.zeros(64, np.int32)
    launch(module, "tiles", 1, 64, x, sums, ranks)
    assert sums.tolist() == x.reshape(4, 16).sum(axis=1).tolist()
    rank = np.arange(64) % 16
    assert ranks.tolist() == (rank + 100 * np.where(rank < 15, rank + 1, rank)).tolist()


def test_a_kernels_own_fixed_width_typedefs_compile(module: EmuModule) -> None:
    x = np.arange(32, dtype=np.uint64) + (1 << 40)
    out = np.zeros_like(x)
    launch(module, "wide", 1, 32, x, out)
    np.testing.assert_array_equal(out, np.roll(x, -1) * 3)


def test_lanes_waiting_for_each_other_forever_end_the_launch(module: EmuModule) -> None:
    x = np.zeros(32, np.int32)
    with pytest.raises(CUDARuntimeError) as caught:
        launch(module, "deadlock", 1, 32, x)
    assert caught.value.name == "cudaErrorLaunchFailure"
    assert "wait for each other" in caught.value.detail


def test_a_typedef_that_changes_a_width_is_still_refused() -> None:
    with pytest.raises(CompileError):
        EmuModule.from_source(
            'typedef int int64_t;\nextern "C" __global__ void k(int64_t* x) { x[0] = 1; }\n'
        )


@pytest.mark.parametrize(
    "statement, construct",
    [
        ("x[0] = __shfl(x[0], 1);", "__shfl"),
        ("GRID().sync();", "this_grid"),  # seen through a macro
    ],
)
def test_warp_operations_without_masks_and_grid_groups_are_refused(
    statement: str, construct: str
) -> None:
    source = (
        "#include <cooperative_groups.h>\n"
        "#define GRID() cooperative_groups::this_grid()\n"
        'extern "C" __global__ void k(float* x) {\n'
        f"    {statement}\n"
        "}\n"
    )
    with pytest.raises(CompileError, match=f"cannot run '{construct}'"):
        EmuModule.from_source(source)
