"""gpupool.cupy's kernels against real daemons: RawKernel/RawModule and the generated
ElementwiseKernel/ReductionKernel sources, compiled on the daemon, compared with NumPy."""

from __future__ import annotations

import numpy as np
import pytest

import gpupool
import gpupool.cupy as cp
from gpupool.cupy.cuda.compiler import CompileException
from gpupool.errors import CUDARuntimeError
from gpupool.server.daemon import Daemon
from tests.conftest import require_devices

BLOCK_SUMS = r"""
extern "C" __global__ void block_sums(const float* x, float* sums, int n) {
    __shared__ float partial[64];
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    partial[threadIdx.x] = i < n ? x[i] : 0.0f;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) partial[threadIdx.x] += partial[threadIdx.x + s];
        __syncthreads();
    }
    if (threadIdx.x == 0) sums[blockIdx.x] = partial[0];
}
extern "C" __global__ void scale(float* x, float factor, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] *= factor;
}
"""
rng = np.random.default_rng(7)


def test_raw_kernel_with_shared_memory_and_barriers(connected: Daemon) -> None:
    host = rng.random(1000, dtype=np.float32)
    blocks = -(-host.size // 64)
    kernel = cp.RawKernel(BLOCK_SUMS, "block_sums")
    sums = cp.empty(blocks, np.float32)
    kernel((blocks,), (64,), (cp.array(host), sums, np.int32(host.size)))
    expected = np.add.reduceat(host, np.arange(0, host.size, 64))
    np.testing.assert_allclose(sums.get(), expected, rtol=1e-5)
    assert kernel.max_threads_per_block >= 64


def test_raw_module_functions_and_errors(connected: Daemon) -> None:
    module = cp.RawModule(code=BLOCK_SUMS)
    scale = module.get_function("scale")
    x = cp.array(np.arange(10, dtype=np.float32))
    scale((1,), (32,), (x, np.float32(3), np.int32(10)))
    np.testing.assert_array_equal(x.get(), np.arange(10, dtype=np.float32) * 3)
    with pytest.raises(CUDARuntimeError, match="cudaErrorSymbolNotFound"):
        module.get_function("no_such_kernel")
    with pytest.raises(TypeError, match="tuple or a list"):
        scale((1,), (32,), x)
    with pytest.raises(CompileException) as info:
        cp.RawKernel('extern "C" __global__ void broken() { undeclared(); }', "broken").compile()
    assert "undeclared" in info.value.log
    with pytest.raises(NotImplementedError, match="name_expressions"):
        cp.RawModule(code=BLOCK_SUMS, name_expressions=["f<int>"])


def test_elementwise_kernel_placeholders_scalars_broadcasting_preamble(connected: Daemon) -> None:
    axpb = cp.ElementwiseKernel(
        "T x, T y, float64 a",
        "T z",
        "z = a * x + y + offset<T>()",
        "axpb",
        preamble="template <typename V> __device__ V offset() { return V(1); }",
    )
    x = rng.random((3, 4)).astype(np.float32)
    y = rng.random(4).astype(np.float32)
    z = axpb(cp.array(x), cp.array(y), 2.5)
    assert z.dtype == np.float32 and z.shape == (3, 4)
    np.testing.assert_allclose(z.get(), (2.5 * x + y + 1).astype(np.float32), rtol=1e-6)
    # Another dtype compiles another kernel of the same name; integers stay integers.
    xi, yi = np.arange(12, dtype=np.int64).reshape(3, 4), np.arange(4, dtype=np.int64)
    zi = axpb(cp.array(xi), cp.array(yi), 2.0)
    assert zi.dtype == np.int64
    np.testing.assert_array_equal(zi.get(), (2 * xi + yi + 1))
    # A given output, non-contiguous broadcasting over a middle axis.
    out = cp.empty((2, 3, 4), np.float32)
    col = rng.random((2, 1, 4)).astype(np.float32)
    axpb(cp.array(col), cp.array(x), 0.5, out)
    np.testing.assert_allclose(out.get(), 0.5 * col + x + 1, rtol=1e-6)


def test_elementwise_kernel_raw_arguments_index_and_size(connected: Daemon) -> None:
    reverse = cp.ElementwiseKernel("raw T x", "T y", "y = x[_ind.size() - i - 1]", "reverse")
    host = rng.random(7)
    np.testing.assert_array_equal(
        reverse(cp.array(host), cp.empty(7, np.float64)).get(), host[::-1]
    )
    iota = cp.ElementwiseKernel("", "raw int32 y", "y[i] = i * i", "iota")
    out = cp.empty(5, np.int32)
    iota(out, size=5)
    np.testing.assert_array_equal(out.get(), np.arange(5) ** 2)
    two_outputs = cp.ElementwiseKernel("T x", "T lo, T hi", "lo = x - 1; hi = x + 1", "span")
    lo, hi = two_outputs(cp.array(np.arange(3.0)))
    np.testing.assert_array_equal(hi.get() - lo.get(), [2.0, 2.0, 2.0])


def test_elementwise_kernel_errors_are_cupys(connected: Daemon) -> None:
    add = cp.ElementwiseKernel("float32 x, T y", "T z", "z = x + y", "add")
    f32, f64 = cp.array(np.ones(3, np.float32)), cp.array(np.ones(3))
    with pytest.raises(TypeError, match="Type is mismatched"):
        add(f64, f64)
    with pytest.raises(TypeError, match="Wrong number of arguments"):
        add(f32)
    with pytest.raises(ValueError, match="could not be broadcast"):
        add(f32, cp.array(np.ones(4)))
    with pytest.raises(ValueError, match="Out shape is mismatched"):
        add(f32, cp.array(np.ones((2, 3))), cp.empty((1, 3), np.float64))
    with pytest.raises(TypeError, match="Unsupported type"):
        add(np.ones(3, np.float32), f64)
    with pytest.raises(ValueError, match="Loop size is undecided"):
        cp.ElementwiseKernel("raw T x", "raw T y", "y[i] = x[i]", "copy")(f32, f32)
    with pytest.raises(ValueError, match="Can not use 'i'"):
        cp.ElementwiseKernel("T i", "T y", "y = i", "bad")
    with pytest.raises(CompileException):
        cp.ElementwiseKernel("T x", "T y", "y = x +* ;", "broken")(f32)


def test_reduction_kernel_axes_keepdims_preamble_and_scalars(connected: Daemon) -> None:
    weighted_norm = cp.ReductionKernel(
        "T x, T w",
        "T y",
        "square(x) * w",
        "a + b",
        "y = sqrt(a)",
        "0",
        "weighted_norm",
        preamble="template <typename V> __device__ V square(V v) { return v * v; }",
    )
    host = rng.random((5, 6, 7))
    x = cp.array(host)
    np.testing.assert_allclose(weighted_norm(x, 2.0).get(), np.sqrt((2 * host**2).sum()))
    for axis in (0, 1, 2, -1, (0, 2), (1, 2)):
        for keepdims in (False, True):
            got = weighted_norm(x, 1.0, axis=axis, keepdims=keepdims).get()
            expected = np.sqrt((host**2).sum(axis=axis, keepdims=keepdims))
            assert got.shape == expected.shape
            np.testing.assert_allclose(got, expected, rtol=1e-12)
    with pytest.raises(np.exceptions.AxisError):
        weighted_norm(x, 1.0, axis=3)


def test_reduction_kernel_types_outputs_and_broadcasting(connected: Daemon) -> None:
    count_above = cp.ReductionKernel(
        "T x, T limit", "int64 n", "x > limit ? 1 : 0", "a + b", "n = a", "0", "count_above"
    )
    host = rng.integers(0, 100, (4, 50), dtype=np.int32)
    out = cp.empty(4, np.int64)
    count_above(cp.array(host), 49, out, axis=1)
    np.testing.assert_array_equal(out.get(), (host > 49).sum(axis=1))
    maximum = cp.ReductionKernel(
        "T x, T y", "T m", "x * y", "max(a, b)", "m = a", "-1e300", "max_product"
    )
    rows, cols = rng.random((3, 1)), rng.random((1, 4))
    got = maximum(cp.array(rows), cp.array(cols), axis=0).get()
    np.testing.assert_allclose(got, (rows * cols).max(axis=0))
    with pytest.raises(ValueError, match="Out shape is mismatched"):
        count_above(cp.array(host), 1, cp.empty(5, np.int64), axis=1)


def test_kernels_compile_once_per_signature(connected: Daemon) -> None:
    double = cp.ElementwiseKernel("T x", "T y", "y = 2 * x", "double_it")
    x = cp.array(np.arange(100, dtype=np.float32))
    double(x)
    before = gpupool.stats().round_trips
    for _ in range(20):
        double(x)
    assert gpupool.stats().round_trips == before  # cached: launches are queued, nothing waits
    np.testing.assert_array_equal(double(x).get(), np.arange(100) * 2)


def test_generated_kernels_refuse_arrays_of_another_device(connected: Daemon) -> None:
    """A kernel runs on the current device; another device's pointers mean nothing there."""
    require_devices(2)
    double = cp.ElementwiseKernel("T x", "T y", "y = 2 * x", "double_it")
    total = cp.ReductionKernel("T x", "T y", "x", "a + b", "y = a", "0", "total")
    with cp.cuda.Device(1):
        elsewhere = cp.arange(4, dtype=np.float32)
    for kernel in (double, total):
        with pytest.raises(ValueError, match=r"resides \(1\) is different from the current"):
            kernel(elsewhere)
    with cp.cuda.Device(1):  # where the array is, both work
        assert double(elsewhere).get().tolist() == [0, 2, 4, 6]
        assert float(total(elsewhere)) == 6
