"""The CPU emulator's CUDA C path: real g++ compiles, results checked against numpy.

Device memory here is numpy arrays (in the emulator a device pointer is a host address). The
kernels are grouped into a few modules so that the suite compiles only a handful of times.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from gpupool.errors import CompileError, CUDARuntimeError
from gpupool.server.backends import emu_kernels
from gpupool.server.backends.emu_kernels import EmuModule

needs_cxx = pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")

# Kernels without __shared__ memory: blocks may be spread over several host threads.
ELEMENTWISE = r"""
#include <cuda_runtime.h>
#include <assert.h>

extern "C" __global__ void saxpy(float a, const float* __restrict__ x, float* __restrict__ y,
                                 int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = a * x[i] + y[i];
}

extern "C" {
__global__ void where_am_i(int* out) {
    unsigned block = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    unsigned thread = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    out[block * blockDim.x * blockDim.y * blockDim.z + thread] =
        ((((blockIdx.z * 10 + blockIdx.y) * 10 + blockIdx.x) * 10 + threadIdx.z) * 10
         + threadIdx.y) * 10 + threadIdx.x;
}
}

extern "C" __global__ void histogram(const int* values, int n, int* bins, int nbins) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) atomicAdd(&bins[values[i] % nbins], 1);
}

// result: max, min, CAS winners, CAS slot, or-mask, xor, and-mask, sub
extern "C" __global__ void int_atomics(const int* values, int n, int* result) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    atomicMax(&result[0], values[i]);
    atomicMin(&result[1], values[i]);
    if (atomicCAS(&result[3], -1, i) == -1) atomicAdd(&result[2], 1);
    atomicOr(&result[4], 1 << (values[i] & 15));
    atomicXor(&result[5], values[i]);
    atomicAnd(&result[6], ~(1 << (values[i] & 15)));
    atomicSub(&result[7], 2);
}

extern "C" __global__ void wide_atomics(float* f, double* d, unsigned long long* u, unsigned* wrap,
                                        unsigned* previous) {
    atomicAdd(f, 1.0f);
    atomicAdd(d, 0.5);
    atomicAdd(u, 3ull);
    atomicInc(wrap, 9u);
    atomicExch(previous, 7u);
}

extern "C" __global__ void scalars(signed char i8, unsigned char u8, short i16, unsigned short u16,
                                   int i32, unsigned int u32, long long i64,
                                   unsigned long long u64, __half f16, float f32, double f64,
                                   bool flag, float4 vec, double* out) {
    double values[] = {double(i8), double(u8), double(i16), double(u16), double(i32),
                       double(u32), double(i64), double(u64), __half2float(f16), f32, f64,
                       flag ? 1.0 : 0.0, vec.x, vec.y, vec.z, vec.w};
    for (int k = 0; k < 16; ++k) out[k] = values[k];
}

extern "C" __global__ void widths(long long wide, int narrow, long long* out) {
    out[0] = wide;
    out[1] = narrow;
}

__constant__ float coefficients[2] = {1.5f, 2.5f};

__host__ __device__ __forceinline__ float square(float v) { return v * v; }
__device__ __noinline__ int twice(int v) { return 2 * v; }

static_assert(sizeof(float4) == 16 && alignof(float4) == 16 && alignof(int2) == 8);
static_assert(sizeof(__half) == 2 && sizeof(size_t) == 8);

extern "C" __global__ void intrinsics(float* f, int* i) {
    f[0] = rsqrtf(4.0f);
    f[1] = __saturatef(1.5f) + __saturatef(-2.0f);
    f[2] = __expf(1.0f);
    f[3] = min(3, 2.5f);
    f[4] = max(2u, 7);
    f[5] = __half2float(__float2half(0.333f));
    f[6] = erfinvf(0.5f);
    f[7] = __int_as_float(0x3f800000) + fmaf(2.0f, 3.0f, 4.0f);
    f[8] = __ldg(&coefficients[1]) + square(2.0f);
    float peak = 1.0f;
    atomicMax(&peak, 5.0f);
    __half h = __float2half(1.0f);
    atomicAdd(&h, __float2half(2.0f));
    f[9] = peak + __half2float(h);
    f[10] = sqrtf(2.0f) + fabsf(-1.0f) + sinf(0.0f) + __powf(2.0f, 3.0f);
    i[0] = __popc(0xF0F0u);
    i[1] = __clz(1);
    i[2] = (int)__brev(1u);
    i[3] = __ffs(8);
    i[4] = warpSize;
    i[5] = __float2int_rn(2.5f);
    i[6] = make_int4(1, 2, 3, 4).w + dim3(2, 3).z;
    i[7] = (int)__umulhi(0x80000000u, 4u);
    i[8] = (int)__byte_perm(0x33221100u, 0x77665544u, 0x5410u);
    i[9] = twice(21);
    unsigned long long slot = 5;
    i[10] = (int)atomicCAS(&slot, 5ull, 9ull) + (int)slot;
    printf("hello from block %d\n", blockIdx.x);
}

extern "C" __global__ void checked(const int* values) {
    assert(values[threadIdx.x] >= 0);
}

// min and max ignore a NaN operand on floating-point values, as fminf/fmaxf do
extern "C" __global__ void nan_min_max(const float* x, float* f, double* d, long long* i) {
    float nan = x[0], one = x[1];
    f[0] = min(nan, one);
    f[1] = min(one, nan);
    f[2] = max(nan, one);
    f[3] = max(one, nan);
    f[4] = min(nan, 2);
    f[5] = __half2float(__hmax(__float2half(nan), __float2half(one)));
    f[6] = __half2float(__hmin(__float2half(one), __float2half(nan)));
    d[0] = max(double(nan), 2.0);
    d[1] = min(2.0, double(nan));
    i[0] = min(-7, 5u);  // unsigned comparison, as in C++ and CUDA
    i[1] = max(-1, 2ll);
    i[2] = min(-3ll, 4);
}

// float and double to integer conversions saturate, NaN giving 0; eight results per input
extern "C" __global__ void conversions(const float* x, long long* out) {
    float f = x[threadIdx.x];
    double d = f;
    long long* o = out + 8 * threadIdx.x;
    o[0] = __float2int_rn(f);
    o[1] = __float2int_rz(f);
    o[2] = __float2uint_rd(f);
    o[3] = __float2uint_ru(f);
    o[4] = __float2ll_rn(f);
    o[5] = (long long)__float2ull_rz(f);
    o[6] = __double2int_rd(d);
    o[7] = __double2uint_rn(d);
}

// Kernels from a macro are kernels; kernels and constructs in #if 0 do not exist.
#define DEFINE_INCREMENT(T) \
    extern "C" __global__ void increment_##T(T* x) { x[threadIdx.x] += T(1); }
DEFINE_INCREMENT(int)
DEFINE_INCREMENT(float)
#if 0
extern "C" __global__ void disabled(float* x) { x[0] = __shfl_sync(0xffffffff, x[0], 1); }
#endif

// A CuPy-style float16 (compare cupy/_core/include/cupy/carray.cuh), on __half_raw.
#include <cuda_fp16.h>
class float16 {
  private:
    half data_;
  public:
    __device__ float16() {}
    __device__ float16(float v) : data_(v) {}
    explicit __device__ float16(const __half_raw& v) : data_(v) {}
    __device__ operator float() const { return float(data_); }
    __device__ int isnan() const {
        __half_raw raw = __half_raw(data_);
        return (raw.x & 0x7c00u) == 0x7c00u && (raw.x & 0x03ffu) != 0;
    }
    __device__ float16 negated() const {
        __half_raw raw = __half_raw(data_);
        raw.x ^= 0x8000u;
        return float16(raw);
    }
};
__device__ float16 min(float16 x, float16 y) { return float16(min(float(x), float(y))); }
__device__ int isnan(float16 x) { return x.isnan(); }
#define ELEMENTWISE_FOR(i, n) \
    for (ptrdiff_t i = static_cast<ptrdiff_t>(blockIdx.x) * blockDim.x + threadIdx.x; \
         i < (n); i += static_cast<ptrdiff_t>(blockDim.x) * gridDim.x)

// out: min(a, 1), isnan(a), -a, then CUDA's half functions; six results per element
extern "C" __global__ void cupy_style_half(const float16* a, float* out, ptrdiff_t n) {
    ELEMENTWISE_FOR(i, n) {
        float* o = out + 6 * i;
        __half h = __half_raw(__half_raw(__float2half(float(a[i]))));  // raw round trip
        o[0] = min(a[i], float16(1.0f));
        o[1] = isnan(a[i]) + 2 * __hisnan(h) + 4 * (__hisinf(h) != 0);
        o[2] = a[i].negated();
        o[3] = __half2float(hsqrt(hfloor(h))) + __half2float(hceil(h));
        o[4] = __half2float(hrcp(__short2half_rn(__half2short_rn(h))))
               + __half2float(__uint2half_rn(3u));
        o[5] = __half2float(hlog(hexp(__float2half(1.0f))));
    }
}
"""

# Kernels with __shared__ memory and barriers, plus one that needs neither.
BLOCKWISE = r"""
#define BLOCK 128

extern __shared__ float scratch[];  // dynamic shared memory declared at file scope

__device__ int block_sum(int* partial) {
    for (int k = BLOCK / 2; k > 0; k >>= 1) {
        if (threadIdx.x < k) partial[threadIdx.x] += partial[threadIdx.x + k];
        __syncthreads();
    }
    return partial[0];
}

extern "C" __global__ void __launch_bounds__(BLOCK) reduce(const int* x,
                                                          unsigned long long* total) {
    __shared__ int partial[BLOCK];
    partial[threadIdx.x] = x[blockIdx.x * BLOCK + threadIdx.x];
    __syncthreads();
    int sum = block_sum(partial);
    if (threadIdx.x == 0) atomicAdd(total, (unsigned long long)sum);
}

extern "C" __global__ void reverse_blocks(const float* in, float* out) {
    extern __shared__ __align__(16) float chunk[];
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    chunk[threadIdx.x] = in[i];
    __syncthreads();
    out[i] = chunk[blockDim.x - 1 - threadIdx.x];
}

extern "C" __global__ void rotate_blocks(const float* in, float* out) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    scratch[threadIdx.x] = in[i];
    __syncthreads();
    out[i] = scratch[(threadIdx.x + 1) % blockDim.x];
}

extern "C" __global__ void vote(const int* x, int* result) {
    int positive = x[blockIdx.x * blockDim.x + threadIdx.x] > 0;
    int count = __syncthreads_count(positive);
    int all = __syncthreads_and(positive);
    int any = __syncthreads_or(positive);
    if (threadIdx.x == 0) {
        result[3 * blockIdx.x] = count;
        result[3 * blockIdx.x + 1] = all;
        result[3 * blockIdx.x + 2] = any;
    }
}

extern "C" __global__ void fails_midway(int* x) {
    if (threadIdx.x >= 24) return;  // waiting at the end of the block while others fail
    x[threadIdx.x] = 1;
    __syncthreads();
    assert(blockIdx.x != 2 || threadIdx.x != 5);
    __syncthreads();
    x[threadIdx.x] += 1;
}

// 1024-thread blocks (32 x 32) and eleven barriers: a tree sum; every thread checks that its
// partial sum is the one a lockstep machine would have at each step.
extern "C" __global__ void tree_sum(const int* x, long long* out, int* wrong) {
    __shared__ long long partial[1024];
    unsigned t = threadIdx.x + blockDim.x * threadIdx.y;
    partial[t] = x[blockIdx.x * 1024 + t];
    __syncthreads();
    for (unsigned k = 512; k > 0; k >>= 1) {
        long long mine = partial[t];
        if (t < k) partial[t] += partial[t + k];
        __syncthreads();
        if (t < k && partial[t] - mine != partial[t + k]) atomicAdd(wrong, 1);
    }
    if (t == 0) out[blockIdx.x] = partial[0];
}

// Recursion with a 1 KiB frame a level, each kept alive across the call below it.
__device__ int deep(int depth) {
    volatile char frame[1024];
    frame[depth % 1024] = static_cast<char>(depth & 127);
    if (depth == 0) return 0;
    int below = deep(depth - 1);
    return below + frame[depth % 1024];
}

extern "C" __global__ void recurse(int depth, int* out) {
    __syncthreads();
    out[blockIdx.x * blockDim.x + threadIdx.x] = deep(depth + threadIdx.x % 2);
}

extern "C" __global__ void scale(float* x, float factor, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] *= factor;
}

// Threads past the end return before the barriers, which on a GPU count them as arrived.
// out[i]: the neighbour's value (-1 past the end); votes: count, and, or per block.
extern "C" __global__ void early_exit(const int* x, int n, int* out, int* votes) {
    static __shared__ int tile[64];
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    tile[threadIdx.x] = x[i];
    __syncthreads();
    int neighbour = threadIdx.x ^ 1;
    out[i] = blockIdx.x * blockDim.x + neighbour < n ? tile[neighbour] : -1;
    int count = __syncthreads_count(1);
    int all = __syncthreads_and(x[i] >= 0);
    int any = __syncthreads_or(x[i] < 0);
    if (threadIdx.x == 0) {
        votes[3 * blockIdx.x] = count;
        votes[3 * blockIdx.x + 1] = all;
        votes[3 * blockIdx.x + 2] = any;
    }
}
"""


def ptr(array: np.ndarray) -> bytes:
    """A device pointer argument: in the emulator, the array's host address."""
    return np.uint64(array.ctypes.data).tobytes()


def i32(value: int) -> bytes:
    return np.int32(value).tobytes()


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for the session, so the precompiled header (seconds to build) is built once."""
    return tmp_path_factory.mktemp("gpupool-cache")


@pytest.fixture(autouse=True)
def _private_cache(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keeps the tests off the user's ~/.cache."""
    monkeypatch.setenv("GPUPOOL_CACHE_DIR", str(cache_dir))


def _compile_once(source: str, cache_dir: Path) -> EmuModule:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GPUPOOL_CACHE_DIR", str(cache_dir))
        return EmuModule.from_source(source)


@pytest.fixture(scope="module")
def elementwise(cache_dir: Path) -> EmuModule:
    return _compile_once(ELEMENTWISE, cache_dir)


@pytest.fixture(scope="module", params=["switch", "ucontext"])
def blockwise(cache_dir: Path, request: pytest.FixtureRequest) -> EmuModule:
    """The block-wise kernels, their threads as fibers switched by the header's own context
    switch (x86-64) and by the ucontext fallback (other architectures)."""
    options = ["-DGPUPOOL_EMU_UCONTEXT"] if request.param == "ucontext" else []
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GPUPOOL_CACHE_DIR", str(cache_dir))
        return EmuModule.from_source(BLOCKWISE, options)


@pytest.fixture
def compilations(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The compiler commands run during the test."""
    commands: list[list[str]] = []
    real = emu_kernels._run_compiler

    def counting(
        command: Sequence[str], source: str | None, cwd: Path
    ) -> subprocess.CompletedProcess[str]:
        commands.append(list(command))
        return real(command, source, cwd)

    monkeypatch.setattr(emu_kernels, "_run_compiler", counting)
    return commands


def compiles(commands: list[list[str]]) -> list[list[str]]:
    """The compilations among compiler commands, leaving out the preprocessor runs."""
    return [command for command in commands if "-E" not in command]


@needs_cxx
def test_saxpy_matches_numpy(elementwise: EmuModule) -> None:
    n = 1 << 20
    rng = np.random.default_rng(0)
    x = rng.random(n, dtype=np.float32)
    y = rng.random(n, dtype=np.float32)
    expected = np.float32(2) * x + y
    saxpy = elementwise.get_function("saxpy")
    assert (saxpy.num_args, saxpy.arg_sizes) == (4, (4, 8, 8, 4))
    saxpy.launch(
        (n // 256, 1, 1), (256, 1, 1), 0, [np.float32(2).tobytes(), ptr(x), ptr(y), i32(n)]
    )
    np.testing.assert_allclose(y, expected, rtol=1e-6)


@needs_cxx
def test_kernels_in_extern_c_blocks_see_3d_built_ins(elementwise: EmuModule) -> None:
    grid, block = (3, 2, 2), (4, 3, 2)
    out = np.full(np.prod(grid) * np.prod(block), -1, dtype=np.int32)
    elementwise.get_function("where_am_i").launch(grid, block, 0, [ptr(out)])
    bz, by, bx, tz, ty, tx = np.indices((*grid[::-1], *block[::-1])).reshape(6, -1)
    expected = ((((bz * 10 + by) * 10 + bx) * 10 + tz) * 10 + ty) * 10 + tx
    np.testing.assert_array_equal(out, expected)


@needs_cxx
def test_atomic_histogram_across_host_threads(elementwise: EmuModule) -> None:
    n, nbins = 1 << 18, 17
    values = np.random.default_rng(1).integers(0, 1000, n, dtype=np.int32)
    bins = np.zeros(nbins, dtype=np.int32)
    elementwise.get_function("histogram").launch(
        (n // 256, 1, 1), (256, 1, 1), 0, [ptr(values), i32(n), ptr(bins), i32(nbins)]
    )
    np.testing.assert_array_equal(bins, np.bincount(values % nbins, minlength=nbins))


@needs_cxx
def test_integer_atomics_return_and_combine(elementwise: EmuModule) -> None:
    n = 5000
    values = np.random.default_rng(2).integers(-(10**6), 10**6, n, dtype=np.int32)
    result = np.array(
        [np.iinfo(np.int32).min, np.iinfo(np.int32).max, 0, -1, 0, 0, -1, 0], dtype=np.int32
    )
    elementwise.get_function("int_atomics").launch(
        (40, 1, 1), (128, 1, 1), 0, [ptr(values), i32(n), ptr(result)]
    )
    bits = np.left_shift(1, values & 15).astype(np.int32)
    assert result[0] == values.max()
    assert result[1] == values.min()
    assert result[2] == 1  # exactly one thread won the compare-and-swap
    assert 0 <= result[3] < n
    assert result[4] == np.bitwise_or.reduce(bits)
    assert result[5] == np.bitwise_xor.reduce(values)
    assert result[6] == np.bitwise_and.reduce(~bits)
    assert result[7] == -2 * n


@needs_cxx
def test_float_and_wide_atomics(elementwise: EmuModule) -> None:
    f, d = np.zeros(1, np.float32), np.zeros(1, np.float64)
    u, wrap, previous = np.zeros(1, np.uint64), np.zeros(1, np.uint32), np.zeros(1, np.uint32)
    elementwise.get_function("wide_atomics").launch(
        (59, 1, 1), (17, 1, 1), 0, [ptr(f), ptr(d), ptr(u), ptr(wrap), ptr(previous)]
    )
    threads = 59 * 17
    assert (f[0], d[0], u[0]) == (threads, threads / 2, 3 * threads)
    assert wrap[0] == threads % 10  # atomicInc wraps to 0 past its limit of 9
    assert previous[0] == 7


@needs_cxx
def test_scalar_arguments_of_every_width(elementwise: EmuModule) -> None:
    scalars = elementwise.get_function("scalars")
    assert scalars.arg_sizes == (1, 1, 2, 2, 4, 4, 8, 8, 2, 4, 8, 1, 16, 8)
    given: list[np.generic] = [
        np.int8(-100),
        np.uint8(200),
        np.int16(-30000),
        np.uint16(60000),
        np.int32(-2_000_000_000),
        np.uint32(4_000_000_000),
        np.int64(-(2**52) + 3),
        np.uint64(2**63),
        np.float16(1.5),
        np.float32(0.25),
        np.float64(-1e300),
        np.bool_(True),
    ]
    vec = np.array([1.5, -2.5, 3.5, 4.5], dtype=np.float32)
    out = np.zeros(16, dtype=np.float64)
    scalars.launch(
        (1, 1, 1), (1, 1, 1), 0, [v.tobytes() for v in given] + [vec.tobytes(), ptr(out)]
    )
    np.testing.assert_array_equal(out, [float(v.item()) for v in given] + list(vec))


@needs_cxx
def test_short_arguments_are_zero_extended_and_long_ones_truncated(
    elementwise: EmuModule,
) -> None:
    out = np.zeros(2, dtype=np.int64)
    elementwise.get_function("widths").launch(
        (1, 1, 1), (1, 1, 1), 0, [i32(7), np.int64(2**32 + 9).tobytes(), ptr(out)]
    )
    assert out.tolist() == [7, 9]


@needs_cxx
def test_intrinsics_constants_and_printf(
    elementwise: EmuModule, capfd: pytest.CaptureFixture[str]
) -> None:
    f = np.zeros(11, dtype=np.float32)
    i = np.zeros(11, dtype=np.int32)
    elementwise.get_function("intrinsics").launch((1, 1, 1), (1, 1, 1), 0, [ptr(f), ptr(i)])
    expected_f = [
        0.5,
        1.0,
        np.e,
        2.5,
        7.0,
        np.float16(0.333),
        0.4769362762044699,
        11.0,
        6.5,
        8.0,
        np.sqrt(2) + 9,
    ]
    np.testing.assert_allclose(f, np.array(expected_f, dtype=np.float32), rtol=1e-6)
    assert i.tolist() == [8, 31, -(2**31), 4, 32, 2, 5, 2, 0x55441100, 42, 14]
    assert capfd.readouterr().out == "hello from block 0\n"


@needs_cxx
def test_failed_assert_is_a_sticky_cuda_error(elementwise: EmuModule) -> None:
    values = np.arange(64, dtype=np.int32)
    values[40] = -1
    with pytest.raises(CUDARuntimeError) as caught:
        elementwise.get_function("checked").launch((1, 1, 1), (64, 1, 1), 0, [ptr(values)])
    assert caught.value.name == "cudaErrorAssert"
    assert caught.value.sticky
    assert "thread: [40,0,0]" in caught.value.detail


@needs_cxx
def test_block_reduction_with_shared_memory_and_barriers(blockwise: EmuModule) -> None:
    x = np.random.default_rng(3).integers(0, 1 << 20, 512 * 128, dtype=np.int32)
    total = np.zeros(1, dtype=np.uint64)
    blockwise.get_function("reduce").launch((512, 1, 1), (128, 1, 1), 0, [ptr(x), ptr(total)])
    assert int(total[0]) == int(x.sum(dtype=np.int64))


@needs_cxx
@pytest.mark.parametrize("kernel, shift", [("reverse_blocks", None), ("rotate_blocks", 1)])
def test_dynamic_shared_memory(blockwise: EmuModule, kernel: str, shift: int | None) -> None:
    blocks, threads = 256, 96  # enough blocks for several host threads, each with its own
    x = np.arange(blocks * threads, dtype=np.float32)
    out = np.zeros_like(x)
    blockwise.get_function(kernel).launch(
        (blocks, 1, 1), (threads, 1, 1), threads * 4, [ptr(x), ptr(out)]
    )
    chunks = x.reshape(blocks, threads)
    expected = chunks[:, ::-1] if shift is None else np.roll(chunks, -shift, axis=1)
    np.testing.assert_array_equal(out.reshape(blocks, threads), expected)


@needs_cxx
def test_syncthreads_count_and_or(blockwise: EmuModule) -> None:
    x = np.ones((3, 64), dtype=np.int32)
    x[1, ::2] = 0
    x[2, :] = -1
    result = np.full(9, -7, dtype=np.int32)
    blockwise.get_function("vote").launch((3, 1, 1), (64, 1, 1), 0, [ptr(x), ptr(result)])
    assert result.reshape(3, 3).tolist() == [[64, 1, 1], [32, 0, 1], [0, 0, 0]]


@needs_cxx
def test_assert_between_barriers_stops_the_launch_without_hanging(blockwise: EmuModule) -> None:
    x = np.zeros(32, dtype=np.int32)
    with pytest.raises(CUDARuntimeError, match="cudaErrorAssert"):
        blockwise.get_function("fails_midway").launch((8, 1, 1), (32, 1, 1), 0, [ptr(x)])


@needs_cxx
def test_1024_thread_blocks_with_eleven_barriers(blockwise: EmuModule) -> None:
    blocks = 12
    x = np.random.default_rng(4).integers(-(1 << 30), 1 << 30, blocks * 1024, dtype=np.int32)
    out = np.zeros(blocks, dtype=np.int64)
    wrong = np.zeros(1, dtype=np.int32)
    blockwise.get_function("tree_sum").launch(
        (blocks, 1, 1), (32, 32, 1), 0, [ptr(x), ptr(out), ptr(wrong)]
    )
    np.testing.assert_array_equal(out, x.reshape(blocks, 1024).sum(axis=1, dtype=np.int64))
    assert wrong[0] == 0


@needs_cxx
@pytest.mark.parametrize("stack_kib, depth", [(None, 150), ("1024", 800)])
def test_deep_recursion_on_fiber_stacks(
    blockwise: EmuModule, monkeypatch: pytest.MonkeyPatch, stack_kib: str | None, depth: int
) -> None:
    # 256 KiB of stack a thread by default; GPUPOOL_EMU_STACK_KIB asks for more.
    if stack_kib is not None:
        monkeypatch.setenv("GPUPOOL_EMU_STACK_KIB", stack_kib)
    out = np.zeros(2 * 64, dtype=np.int32)
    blockwise.get_function("recurse").launch((2, 1, 1), (64, 1, 1), 0, [i32(depth), ptr(out)])
    sums = [sum(d & 127 for d in range(1, top + 1)) for top in (depth, depth + 1)]
    assert out.tolist() == sums * 64


@needs_cxx
def test_kernel_without_barriers_in_a_module_with_them(blockwise: EmuModule) -> None:
    n = 1 << 16
    x = np.arange(n, dtype=np.float32)
    blockwise.get_function("scale").launch(
        (n // 256, 1, 1), (256, 1, 1), 0, [ptr(x), np.float32(0.5).tobytes(), i32(n)]
    )
    np.testing.assert_array_equal(x, np.arange(n, dtype=np.float32) * np.float32(0.5))


@needs_cxx
@pytest.mark.parametrize(
    "source, cooperative, shared_statics",
    [(BLOCKWISE, True, True), (ELEMENTWISE, False, False)],
    ids=["blockwise", "elementwise"],
)
def test_a_module_that_mentions_syncthreads_runs_every_kernel_with_barriers(
    source: str, cooperative: bool, shared_statics: bool
) -> None:
    preprocessed = emu_kernels._preprocess(emu_kernels._compiler(), source, [])
    translation = emu_kernels._translate(source, preprocessed)
    assert (translation.cooperative, translation.shared_statics) == (cooperative, shared_statics)


@needs_cxx
@pytest.mark.parametrize("blocks, n", [(1, 40), (8, 300), (300, 17000)])
def test_threads_that_return_before_a_barrier_count_as_arrived(
    blockwise: EmuModule, blocks: int, n: int
) -> None:
    x = np.arange(blocks * 64, dtype=np.int32)
    x[5] = -5
    out = np.full_like(x, -7)
    votes = np.full(3 * blocks, -7, dtype=np.int32)
    blockwise.get_function("early_exit").launch(
        (blocks, 1, 1), (64, 1, 1), 0, [ptr(x), i32(n), ptr(out), ptr(votes)]
    )
    neighbours = np.arange(n) ^ 1
    expected = np.where(neighbours < n, x[np.minimum(neighbours, n - 1)], -1)
    np.testing.assert_array_equal(out[:n], expected)
    assert (out[n:] == -7).all()
    running = np.clip(n - 64 * np.arange(blocks), 0, 64)
    for block, (count, all_, any_) in enumerate(votes.reshape(blocks, 3).tolist()):
        if running[block] == 0:
            assert (count, all_, any_) == (-7, -7, -7)  # no thread of the block ran that far
        else:
            negative = block == 0
            assert (count, all_, any_) == (running[block], int(not negative), int(negative))


@needs_cxx
def test_wrong_argument_count(elementwise: EmuModule) -> None:
    with pytest.raises(CUDARuntimeError) as caught:
        elementwise.get_function("saxpy").launch((1, 1, 1), (1, 1, 1), 0, [b"\0" * 4] * 3)
    assert caught.value.name == "cudaErrorInvalidValue"
    assert caught.value.detail == "kernel 'saxpy' takes 4 arguments, got 3"


@needs_cxx
def test_unknown_function(elementwise: EmuModule) -> None:
    with pytest.raises(CUDARuntimeError) as caught:
        elementwise.get_function("saxpby")
    assert caught.value.name == "cudaErrorSymbolNotFound"
    assert "'saxpby'" in caught.value.detail


@needs_cxx
def test_invalid_configuration_is_refused_here_too(elementwise: EmuModule) -> None:
    """The daemon checks first (tests/test_executor.py has the cases); a direct launch too."""
    x = np.zeros(1, dtype=np.float32)
    args = [np.float32(1).tobytes(), ptr(x), ptr(x), i32(0)]
    with pytest.raises(CUDARuntimeError) as caught:
        elementwise.get_function("saxpy").launch((1, 1, 1), (1025, 1, 1), 0, args)
    assert caught.value.name == "cudaErrorInvalidConfiguration"
    assert "block.x" in caught.value.detail


@needs_cxx
def test_compile_error_carries_the_log_with_user_line_numbers() -> None:
    source = (
        'extern "C" __global__ void broken(float* x) {\n'
        "    int i = threadIdx.x;\n"
        "    x[i] = undefined_name;\n"
        "}\n"
    )
    with pytest.raises(CompileError) as caught:
        EmuModule.from_source(source)
    assert "broken" in caught.value.message
    assert "kernel.cu:3:" in caught.value.log
    assert "undefined_name" in caught.value.log


@needs_cxx
@pytest.mark.parametrize(
    "statement, construct, what",
    [
        (
            "x[0] = __shfl_down(x[0], 1);",
            "__shfl_down",
            "a warp operation without a mask (removed in CUDA 9; use its _sync form)",
        ),
        ("NAP();", "__nanosleep", "sleep"),  # seen through a macro
        ("__nv_bfloat16 b; (void)b;", "__nv_bfloat16", "bfloat16"),
    ],
)
def test_unsupported_construct_is_named(statement: str, construct: str, what: str) -> None:
    source = (
        "#include <cuda_bf16.h>\n"
        "#define NAP() __nanosleep(100)\n"
        'extern "C" __global__ void warp_sum(float* x) {\n'
        f"    {statement}\n"
        "}\n"
    )
    with pytest.raises(CompileError) as caught:
        EmuModule.from_source(source)
    assert caught.value.message == (
        f"the emulator cannot run '{construct}' ({what}): run this kernel on a GPU daemon"
    )


def test_missing_compiler(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXX", "/nonexistent/g++")
    with pytest.raises(CompileError, match="needs a C\\+\\+ compiler"):
        EmuModule.from_source('extern "C" __global__ void nothing() {}')


@needs_cxx
def test_second_compile_of_a_source_is_a_cache_hit(compilations: list[list[str]]) -> None:
    # Warp intrinsics named in comments and strings are not uses of them.
    source = r"""
    // unlike __shfl_xor_sync, this works everywhere
    extern "C" __global__ void fill(int* x, int v) {
        const char* note = "no asm here";
        x[threadIdx.x] = v + (note[0] == 'n');
    }
    """
    first = EmuModule.from_source(source)
    compiled = len(compiles(compilations))
    second = EmuModule.from_source(source)
    assert compiled >= 1
    assert len(compiles(compilations)) == compiled
    x = np.zeros(8, dtype=np.int32)
    second.get_function("fill").launch((1, 1, 1), (8, 1, 1), 0, [ptr(x), i32(4)])
    assert first.kernel_names == second.kernel_names == ("fill",)
    assert x.tolist() == [5] * 8


@needs_cxx
def test_options_defines_and_include_paths(tmp_path: Path) -> None:
    # CUDA and C headers in a user header are the emulator's: its assert does not abort.
    (tmp_path / "helpers.h").write_text(
        "#include <cuda_fp16.h>\n#include <cassert>\n#define OFFSET 4\n"
        "__device__ void sync_all() { __syncthreads(); }\n"
    )
    source = r"""
    #include "helpers.h"
    namespace ops {
    extern "C" __global__ void shifted(int* x) {
        x[threadIdx.x] = SCALE * threadIdx.x + OFFSET + ONE;
    }
    }
    extern "C" __global__ void neighbours(int* x) {
        __shared__ int tile[4];
        tile[threadIdx.x] = threadIdx.x * 10;
        sync_all();  // the barrier is in the header: still seen
        x[threadIdx.x] = tile[(threadIdx.x + 1) % 4];
    }
    template <typename T> __global__ void generic(T* x) { x[threadIdx.x] = T(1); }
    extern "C" __global__ void checked() { assert(ONE == 2); }
    """
    options = ["-std=c++17", "--use_fast_math", "-arch=sm_80", "-DSCALE=3", "-D", "ONE"]
    module = EmuModule.from_source(source, [*options, "-I", str(tmp_path)])
    # A template has no name to launch.
    assert module.kernel_names == ("shifted", "neighbours", "checked")
    x = np.zeros(4, dtype=np.int32)
    module.get_function("shifted").launch((1, 1, 1), (4, 1, 1), 0, [ptr(x)])
    assert x.tolist() == [5, 8, 11, 14]
    module.get_function("neighbours").launch((1, 1, 1), (4, 1, 1), 0, [ptr(x)])
    assert x.tolist() == [10, 20, 30, 0]
    with pytest.raises(CUDARuntimeError, match="cudaErrorAssert"):
        module.get_function("checked").launch((1, 1, 1), (1, 1, 1), 0, [])


@needs_cxx
def test_min_and_max_ignore_nan_on_floating_point(elementwise: EmuModule) -> None:
    x = np.array([np.nan, 1.0], dtype=np.float32)
    f, d, i = np.zeros(7, np.float32), np.zeros(2, np.float64), np.zeros(3, np.int64)
    elementwise.get_function("nan_min_max").launch(
        (1, 1, 1), (1, 1, 1), 0, [ptr(x), ptr(f), ptr(d), ptr(i)]
    )
    assert f.tolist() == [1.0, 1.0, 1.0, 1.0, 2.0, 1.0, 1.0]
    assert d.tolist() == [2.0, 2.0]
    assert i.tolist() == [5, 2, -3]


@needs_cxx
def test_float_to_integer_conversions_saturate_at_run_time(elementwise: EmuModule) -> None:
    x = np.array([1e10, -1e10, np.nan, 3e9, -1.0, 2.5, -2.5, np.inf], dtype=np.float32)
    out = np.zeros((len(x), 8), dtype=np.int64)
    elementwise.get_function("conversions").launch((1, 1, 1), (len(x), 1, 1), 0, [ptr(x), ptr(out)])
    int_max, int_min, uint_max = 2**31 - 1, -(2**31), 2**32 - 1
    ll_max, ull_max = 2**63 - 1, -1  # ull_max read back as a long long
    assert out.tolist() == [
        [int_max, int_max, uint_max, uint_max, 10**10, 10**10, int_max, uint_max],
        [int_min, int_min, 0, 0, -(10**10), 0, int_min, 0],
        [0] * 8,
        [int_max, int_max, 3 * 10**9, 3 * 10**9, 3 * 10**9, 3 * 10**9, int_max, 3 * 10**9],
        [-1, -1, 0, 0, -1, 0, -1, 0],
        [2, 2, 2, 3, 2, 2, 2, 2],
        [-2, -2, 0, 0, -2, 0, -3, 0],
        [int_max, int_max, uint_max, uint_max, ll_max, ull_max, int_max, uint_max],
    ]


@needs_cxx
def test_kernels_from_macros_and_not_from_disabled_code(elementwise: EmuModule) -> None:
    assert "increment_int" in elementwise.kernel_names
    assert "increment_float" in elementwise.kernel_names
    assert "disabled" not in elementwise.kernel_names  # nor refused for its __shfl_sync
    x = np.arange(4, dtype=np.float32)
    elementwise.get_function("increment_float").launch((1, 1, 1), (4, 1, 1), 0, [ptr(x)])
    assert x.tolist() == [1, 2, 3, 4]


@needs_cxx
def test_cupy_style_float16_on_half_raw(elementwise: EmuModule) -> None:
    a = np.array([0.5, 2.25, np.nan, np.inf, -1.5, 4.0], dtype=np.float16)
    out = np.zeros((len(a), 6), dtype=np.float32)
    elementwise.get_function("cupy_style_half").launch(
        (1, 1, 1), (4, 1, 1), 0, [ptr(a), ptr(out), np.int64(len(a)).tobytes()]
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        h = a.astype(np.float32)
        rounded = np.clip(np.nan_to_num(np.rint(h), nan=0), -32768, 32767)
        expected = np.stack(
            [
                np.fmin(h, 1),
                np.isnan(h) * 3 + np.isinf(h) * 4,
                -h,
                np.sqrt(np.floor(h)) + np.ceil(h),
                np.float16(1) / rounded.astype(np.float16) + 3,
                np.full_like(h, np.float16(np.log(np.float16(np.e)))),
            ],
            axis=1,
        )
    np.testing.assert_allclose(out, expected, rtol=1e-3)


@needs_cxx
def test_each_module_has_its_own_device_variables(cache_dir: Path) -> None:
    source = r"""
    __device__ int counter;
    extern "C" __global__ void bump(int* seen) { seen[0] = atomicAdd(&counter, 1); }
    """
    first, second = EmuModule.from_source(source), EmuModule.from_source(source)
    seen = np.zeros(1, dtype=np.int32)
    results = []
    for module in (first, first, second, first):
        module.get_function("bump").launch((1, 1, 1), (1, 1, 1), 0, [ptr(seen)])
        results.append(int(seen[0]))
    assert results == [0, 1, 0, 2]
    copies = [p.name for p in cache_dir.glob("*.so") if p.name.count(".") > 1]
    assert copies == []  # the private copies are deleted once loaded


@needs_cxx
def test_preprocessor_errors_carry_the_log() -> None:
    with pytest.raises(CompileError) as caught:
        EmuModule.from_source('#include "missing.cuh"\nextern "C" __global__ void k() {}\n')
    assert "could not preprocess" in caught.value.message
    assert "kernel.cu:1" in caught.value.log
    assert "missing.cuh" in caught.value.log


@pytest.mark.parametrize(
    "source",
    [
        '#include "/etc/passwd"\n',
        '%:include "/etc/passwd"\n',
        '#/**/include "/etc/passwd"\n',
        '#inc\\\nlude "/etc/passwd"\n',
        "#include <../../../../../../../../etc/passwd>\n",
        '#define P "/etc/passwd"\n#include P\n',
        '#import "/etc/passwd"\n',
        '#include_next "/etc/passwd"\n',
        '#if __has_include("/etc/passwd")\n#include "/etc/passwd"\n#endif\n',
    ],
)
def test_the_emulator_checks_what_its_preprocessor_read(source: str) -> None:
    """Without the executor's textual filter: the line markers name every file read, however
    the directive was spelled, and nothing of the file comes back in the log."""
    with pytest.raises(CompileError, match="refused") as refused:
        EmuModule.from_source(source + "__global__ void k() {}\n")
    assert "root:" not in refused.value.log and "root:" not in refused.value.message


def test_a_module_cannot_include_the_compilers_working_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Relative includes find nothing: the compiler runs in an empty folder of its own (not
    the daemon's, not the cache of other tenants' modules)."""
    for folder in (tmp_path, emu_kernels._cache_dir()):
        (folder / "secret.h").write_text("int leaked = 1;\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CompileError, match="could not preprocess") as failed:
        EmuModule.from_source('#include "secret.h"\n__global__ void k() {}\n')
    assert "leaked" not in failed.value.log


def test_system_headers_still_include() -> None:
    source = "#include <cmath>\n#include <cstdint>\n#include <cuda_fp16.h>\n"
    module = EmuModule.from_source(
        source + 'extern "C" __global__ void k(float* x) { *x = sqrtf(*x); }\n'
    )
    assert module.kernel_names == ("k",)
