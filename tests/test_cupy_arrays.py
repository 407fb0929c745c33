"""``gpupool.cupy`` arrays against real daemons, compared with NumPy.

Every test runs on the emulator and (marked ``gpu``) on the CuPy backend: the daemon side of
array operations is NumPy on one and CuPy on the other.
"""

from __future__ import annotations

import gc
import re
from collections.abc import Iterator

import numpy as np
import pytest

import gpupool
import gpupool.cupy as cp
from gpupool import runtime as rt
from gpupool.client import addressing
from gpupool.cupy import cuda
from gpupool.cupy._remote import descriptor
from gpupool.errors import CUDARuntimeError
from gpupool.proto import gpupool_pb2 as pb
from gpupool.server.daemon import Daemon
from tests.conftest import require_devices

RNG = np.random.default_rng(7)


@pytest.fixture(autouse=True)
def _collect_before_disconnect(connected: Daemon) -> Iterator[None]:
    """Arrays held in reference cycles (a caught exception's frames) are freed while the test's
    session is still there: their frees belong to it, not to the next test's."""
    yield
    gc.collect()


def host(shape: tuple[int, ...] = (3, 4), dtype: type = np.float64) -> np.ndarray:
    return (RNG.standard_normal(shape) * 10).astype(dtype)


def same(remote: cp.ndarray, expected: np.ndarray, **tolerance: float) -> None:
    """The remote array has NumPy's shape, dtype and values."""
    assert isinstance(remote, cp.ndarray)
    got = remote.get()
    assert got.shape == np.shape(expected)
    assert got.dtype == np.asarray(expected).dtype, (got.dtype, np.asarray(expected).dtype)
    np.testing.assert_allclose(got, expected, **({"rtol": 1e-12} | tolerance))


# creation


def test_creation_functions_match_numpy(connected: Daemon) -> None:
    same(cp.zeros((2, 3), np.int32), np.zeros((2, 3), np.int32))
    same(cp.ones(4), np.ones(4))
    same(cp.full((2, 2), 7, np.int8), np.full((2, 2), 7, np.int8))
    same(cp.full(3, 2.5), np.full(3, 2.5))
    same(cp.arange(10), np.arange(10))
    same(cp.arange(1, 4, 0.5), np.arange(1, 4, 0.5))
    same(cp.arange(5, 0, -2, dtype=np.float32), np.arange(5, 0, -2, dtype=np.float32))
    same(cp.arange(3, 3), np.arange(3, 3))
    same(cp.linspace(0, 1, 7), np.linspace(0, 1, 7))
    same(
        cp.linspace(2, 3, 4, endpoint=False, dtype=np.float32),
        np.linspace(2, 3, 4, False, dtype=np.float32),
    )
    _, step = cp.linspace(0, 10, 5, retstep=True)
    assert step == np.linspace(0, 10, 5, retstep=True)[1]
    data = host((2, 3))
    a = cp.array(data)
    same(a, data)
    same(cp.array([[1, 2], [3, 4]], dtype=np.uint16), np.array([[1, 2], [3, 4]], np.uint16))
    same(cp.array(data, ndmin=4), np.array(data, ndmin=4))
    assert cp.asarray(a) is a
    same(cp.asarray(a, np.float32), data.astype(np.float32))
    assert cp.empty((2, 5), np.int16).shape == (2, 5)
    for like, fill in ((cp.zeros_like, 0), (cp.ones_like, 1)):
        same(like(a), np.full_like(data, fill))
    same(cp.full_like(a, 3, dtype=np.int64), np.full_like(data, 3, dtype=np.int64))
    assert cp.empty_like(a, shape=(4,)).shape == (4,)
    f = cp.asfortranarray(a)
    assert f.flags.f_contiguous and not f.flags.c_contiguous
    same(f, data)
    c = cp.ascontiguousarray(f)
    assert c.flags.c_contiguous
    same(c, data)
    assert cp.ascontiguousarray(a) is a
    np.testing.assert_array_equal(cp.asnumpy(a), data)
    assert cp.asnumpy([1, 2]).tolist() == [1, 2]
    assert cp.get_array_module(a) is cp and cp.get_array_module(data, 1) is np


def test_attributes_and_views(connected: Daemon) -> None:
    data = host((4, 5, 6))
    a = cp.array(data)
    assert (a.shape, a.dtype, a.size, a.ndim, a.strides, a.nbytes, a.itemsize) == (
        data.shape,
        data.dtype,
        data.size,
        data.ndim,
        data.strides,
        data.nbytes,
        data.itemsize,
    )
    keys = [
        1,
        -1,
        (slice(None), 2),
        (Ellipsis, 3),
        (slice(1, None, 2), None, slice(None, None, -1)),
        (2, 3, 4),
        (slice(None, None, -2), slice(1, 4)),
        (None, Ellipsis, None),
        (0, slice(5, 1, -1)),
    ]
    for key in keys:
        view = a[key]
        assert view.shape == data[key].shape
        assert view.strides == np.asarray(data[key]).strides or view.size <= 1
        same(view, data[key])
    same(a.T, data.T)
    same(a.transpose(1, 0, 2), data.transpose(1, 0, 2))
    same(a.swapaxes(0, 2), data.swapaxes(0, 2))
    same(a.reshape(20, 6), data.reshape(20, 6))
    same(a.reshape(-1), data.reshape(-1))
    same(a[:, ::2].reshape(-1, 3), data[:, ::2].reshape(-1, 3))  # needs a copy
    same(a.T.ravel(), data.T.ravel())
    same(a.T.flatten(), data.T.flatten())
    same(a[:, :1].squeeze(1), data[:, :1].squeeze(1))
    same(cp.expand_dims(a, 1), np.expand_dims(data, 1))
    same(cp.broadcast_to(a[0, 0], (3, 6)), np.broadcast_to(data[0, 0], (3, 6)))
    with pytest.raises(ValueError, match="cannot reshape"):
        a.reshape(7, 7)
    with pytest.raises(IndexError):
        a[4]
    with pytest.raises(IndexError):
        a[0, 0, 0, 0]


def test_astype_copy_fill_and_set(connected: Daemon) -> None:
    data = host((3, 4))
    a = cp.array(data)
    same(a.astype(np.int32), data.astype(np.int32))
    same(a[:, 1:3].astype(np.float32, order="F"), data[:, 1:3].astype(np.float32, order="F"))
    assert a.astype(np.float64, copy=False) is a
    with pytest.raises(TypeError, match="Cannot cast"):
        a.astype(np.int8, casting="safe")
    b = a.copy()
    b.fill(2)
    same(b, np.full_like(data, 2))
    same(a, data)  # the copy did not share memory
    b.set(data * 3)
    same(b, data * 3)
    with pytest.raises(ValueError, match="Shape mismatch"):
        b.set(np.zeros((2, 2)))
    with pytest.raises(TypeError, match="cannot be set"):
        b.set(np.zeros((3, 4), np.float32))
    with pytest.raises(OverflowError):
        cp.zeros(3, np.int8).fill(300)


# indexing


def test_advanced_indexing_and_setitem(connected: Daemon) -> None:
    data = host((5, 6))
    a = cp.array(data)
    rows = np.array([4, 0, 2])
    same(a[[0, 2]], data[[0, 2]])
    same(a[cp.array(rows)], data[rows])
    same(a[:, cp.array(rows)], data[:, rows])
    same(a[cp.array(rows), cp.array([1, 1, 5])], data[rows, [1, 1, 5]])
    same(a[1:, [0, 3]], data[1:, [0, 3]])
    mask = data > 0
    same(a[cp.array(mask)], data[mask])
    same(a[cp.array(mask[:, 0])], data[mask[:, 0]])
    same(a[a > 0], data[data > 0])
    with pytest.raises(IndexError, match="boolean index did not match"):
        a[cp.array(mask[:3])]
    with pytest.raises(IndexError, match="arrays used as indices"):
        a[cp.array([0.5])]
    with pytest.raises(IndexError, match="too many indices"):
        a[[0], 1, 2]
    cube = host((3, 4, 5))
    c = cp.array(cube)
    idx = np.array([[0, 2], [1, 1]])
    for key in [
        (Ellipsis, idx),
        (idx, Ellipsis, 1),
        (1, slice(None), idx),  # advanced indices apart: their dimensions go first
        (idx, slice(1, 3), idx),
        (slice(None), idx, None),
        (cube[:, 0, 0] > 0, Ellipsis),
    ]:
        remote_key = tuple(cp.array(k) if isinstance(k, np.ndarray) else k for k in key)
        same(c[remote_key], cube[key])

    expected = data.copy()
    a[1] = 7
    expected[1] = 7
    a[:, 2] = cp.arange(5)
    expected[:, 2] = np.arange(5)
    a[a < 0] = 0
    expected[expected < 0] = 0
    a[[0, 3], 1:3] = -1.5
    expected[[0, 3], 1:3] = -1.5
    a[2:4] = np.ones(6)
    expected[2:4] = np.ones(6)
    same(a, expected)
    with pytest.raises(ValueError, match="could not broadcast"):
        a[0] = cp.zeros(4)


def test_an_index_out_of_bounds_is_an_index_error_at_the_next_sync(connected: Daemon) -> None:
    if connected.backend != "emu":
        pytest.skip("CuPy wraps out-of-bounds indices around instead (documented in docs/cupy.md)")
    a = cp.arange(4)
    picked = a[cp.array([1, 9])]  # queued: the daemon finds the bad index
    with pytest.raises(IndexError, match="out of bounds"):
        picked.get()
    same(a + 1, np.arange(4) + 1)  # the session goes on


# operators and ufuncs


def test_operators_follow_numpy_promotion(connected: Daemon) -> None:
    x, y = host((3, 4)), host((4,))
    i8 = np.arange(12, dtype=np.int8).reshape(3, 4)
    a, b, c = cp.array(x), cp.array(y), cp.array(i8)
    same(a + b, x + y)
    same(a - 2, x - 2)
    same(2 - a, 2 - x)
    same(a * b, x * y)
    same(a / 3, x / 3)
    same(3 / (b + 100), 3 / (y + 100))
    same(a // 4, x // 4)
    same(a % 5, x % 5)
    same(abs(a) ** 0.5, abs(x) ** 0.5)
    same(-a, -x)
    same(+a, +x)
    same(c + 1, i8 + 1)  # a Python int keeps int8
    same(c + np.int64(1), i8 + np.int64(1))  # a NumPy scalar promotes
    same(c * 1.5, i8 * 1.5)
    same(c & 6, i8 & 6)
    same(c | 1, i8 | 1)
    same(c ^ 3, i8 ^ 3)
    same(c << 1, i8 << 1)
    same(c >> 1, i8 >> 1)
    same(~c, ~i8)
    same(np.float32(2) * a, np.float32(2) * x)  # NumPy scalars on the left defer to us
    for op in ("__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__"):
        same(getattr(a, op)(b), getattr(x, op)(y))
    with pytest.raises(ValueError):
        a + cp.zeros(3)
    with pytest.raises(TypeError, match="Unsupported type"):
        a + x  # a host array is never converted implicitly


def test_in_place_operators_write_into_the_array(connected: Daemon) -> None:
    x = host((3, 4))
    a = cp.array(x)
    before = a.data.ptr
    a += 1
    a *= cp.array(x)
    a -= 2
    a /= 4
    a **= 2
    x = (((x + 1) * x - 2) / 4) ** 2
    assert a.data.ptr == before
    same(a, x)
    c = cp.arange(4)
    with pytest.raises(TypeError, match="Cannot cast ufunc"):
        c += 1.5  # NumPy's same_kind rule
    view = a[1:, ::2]
    view += 100
    x[1:, ::2] += 100
    same(a, x)


UNARY = [
    "absolute",
    "sqrt",
    "square",
    "exp",
    "exp2",
    "expm1",
    "log",
    "log2",
    "log10",
    "log1p",
    "sin",
    "cos",
    "tan",
    "arcsin",
    "arccos",
    "arctan",
    "sinh",
    "cosh",
    "tanh",
    "arcsinh",
    "arctanh",
    "floor",
    "ceil",
    "trunc",
    "rint",
    "sign",
    "negative",
    "reciprocal",
    "cbrt",
    "isnan",
    "isinf",
    "isfinite",
    "logical_not",
    "signbit",
    "degrees",
    "radians",
]
BINARY = [
    "add",
    "subtract",
    "multiply",
    "divide",
    "true_divide",
    "floor_divide",
    "power",
    "mod",
    "remainder",
    "fmod",
    "maximum",
    "minimum",
    "fmax",
    "fmin",
    "arctan2",
    "hypot",
    "equal",
    "not_equal",
    "less",
    "less_equal",
    "greater",
    "greater_equal",
    "logical_and",
    "logical_or",
    "logical_xor",
    "copysign",
]


def test_ufuncs_match_numpy(connected: Daemon) -> None:
    x = RNG.uniform(0.1, 0.9, (4, 5))
    y = RNG.uniform(0.1, 0.9, (5,))
    a, b = cp.array(x), cp.array(y)
    for name in UNARY:
        same(getattr(cp, name)(a), getattr(np, name)(x), rtol=1e-10)
    for name in BINARY:
        same(getattr(cp, name)(a, b), getattr(np, name)(x, y), rtol=1e-10)
    same(cp.abs(cp.array([-1, 2])), np.array([1, 2]))
    out = cp.empty((4, 5))
    assert cp.add(a, 1, out=out) is out
    same(out, x + 1)
    same(cp.multiply(a, 2, dtype=np.float32), np.multiply(x, 2, dtype=np.float32))
    same(cp.sqrt(4.0), np.asarray(np.sqrt(4.0)))  # scalars give a 0-d array
    same(np.add(a, 1), x + 1)  # NumPy's ufuncs dispatch to ours
    with pytest.raises(ValueError, match="non-broadcastable output"):
        cp.add(a, 1, out=cp.empty(5))
    with pytest.raises(NotImplementedError, match=r"docs/cupy\.md"):
        cp.add.reduceat(a, [0])


def test_where_and_clip(connected: Daemon) -> None:
    x = host((4, 5))
    a = cp.array(x)
    same(cp.where(a > 0, a, 0), np.where(x > 0, x, 0))
    same(cp.where(a > 0, 1, -1), np.where(x > 0, 1, -1))
    same(cp.clip(a, -1, 2), np.clip(x, -1, 2))
    same(a.clip(None, 0.5), x.clip(None, 0.5))
    (rows, columns) = cp.where(a > 0)  # one argument: nonzero's indices
    expected_rows, expected_columns = np.nonzero(x > 0)
    same(rows, expected_rows)
    same(columns, expected_columns)


# reductions


@pytest.mark.parametrize("name", ["sum", "prod", "mean", "std", "var", "min", "max", "all", "any"])
def test_reductions_match_numpy(connected: Daemon, name: str) -> None:
    x = host((3, 4, 5))
    a = cp.array(x)
    function, expected = getattr(cp, name), getattr(np, name)
    for axis in (None, 0, 1, -1, (0, 2)):
        for keepdims in (False, True):
            same(
                function(a, axis=axis, keepdims=keepdims),
                expected(x, axis=axis, keepdims=keepdims),
                rtol=1e-10,
            )
    same(getattr(a, name)(axis=1), getattr(x, name)(axis=1), rtol=1e-10)
    with pytest.raises(np.exceptions.AxisError):
        function(a, axis=3)


def test_reduction_options_and_errors(connected: Daemon) -> None:
    i = np.arange(24, dtype=np.int8).reshape(4, 6)
    x = host((4, 6))
    a, c = cp.array(x), cp.array(i)
    same(c.sum(), i.sum())  # int8 sums in int64, as in NumPy
    same(c.sum(axis=0, dtype=np.int16), i.sum(axis=0, dtype=np.int16))
    same(c.mean(axis=1), i.mean(axis=1))
    same(a.var(ddof=1), x.var(ddof=1), rtol=1e-10)
    same(cp.std(a, axis=0, ddof=1), np.std(x, axis=0, ddof=1), rtol=1e-10)
    for name in ("argmin", "argmax"):
        same(getattr(a, name)(), getattr(x, name)())
        same(getattr(cp, name)(a, axis=1), getattr(np, name)(x, axis=1))
        same(
            getattr(cp, name)(a, axis=0, keepdims=True), getattr(np, name)(x, axis=0, keepdims=True)
        )
    same(cp.cumsum(a), np.cumsum(x), rtol=1e-10)
    same(a.cumsum(axis=1), x.cumsum(axis=1), rtol=1e-10)
    same(cp.cumprod(c, axis=0), np.cumprod(i, axis=0))
    out = cp.empty(6)
    assert cp.sum(a, axis=0, out=out) is out
    same(out, x.sum(axis=0), rtol=1e-10)
    with pytest.raises(TypeError, match="same_kind"):
        cp.sum(a, axis=0, out=cp.empty(6, np.int64))
    with pytest.raises(ValueError, match="zero-size array"):
        cp.zeros((0, 3)).max()
    with pytest.raises(TypeError):
        cp.argmax(a, axis=(0, 1))


# products and linear algebra


def test_products_match_numpy(connected: Daemon) -> None:
    x, y, v = host((3, 4)), host((4, 5)), host((4,))
    s = host((2, 3, 4))
    a, b, w, t = cp.array(x), cp.array(y), cp.array(v), cp.array(s)
    same(a @ b, x @ y, rtol=1e-10)
    same(cp.matmul(a, w), x @ v, rtol=1e-10)
    same(cp.matmul(w, b), v @ y, rtol=1e-10)
    same(t @ b, s @ y, rtol=1e-10)
    same(cp.dot(a, b), np.dot(x, y), rtol=1e-10)
    same(cp.dot(w, w), np.dot(v, v), rtol=1e-10)
    same(cp.dot(t, b), np.dot(s, y), rtol=1e-10)
    same(cp.dot(a, cp.array(2.0)), np.dot(x, 2.0))
    same(a.dot(w), x.dot(v), rtol=1e-10)
    same(cp.inner(a, a), np.inner(x, x), rtol=1e-10)
    same(cp.outer(w, a[0]), np.outer(v, x[0]), rtol=1e-10)
    same(cp.matmul(cp.array(x.astype(np.float32)), b), x.astype(np.float32) @ y, rtol=1e-6)
    with pytest.raises(ValueError, match="mismatch in its core dimension"):
        a @ a
    with pytest.raises(ValueError, match="not aligned"):
        cp.dot(a, a)
    with pytest.raises(ValueError, match="enough dimensions"):
        cp.matmul(a, cp.array(2.0))


def test_linalg_norm_and_solve(connected: Daemon) -> None:
    x = host((4, 4)) + 10 * np.eye(4)
    v = host((4,))
    a, w = cp.array(x), cp.array(v)
    same(cp.linalg.norm(w), np.linalg.norm(v), rtol=1e-10)
    same(cp.linalg.norm(a), np.linalg.norm(x), rtol=1e-10)
    same(cp.linalg.norm(a, axis=1), np.linalg.norm(x, axis=1), rtol=1e-10)
    same(cp.linalg.norm(a, ord="fro"), np.linalg.norm(x, ord="fro"), rtol=1e-10)
    same(cp.linalg.norm(w, ord=1), np.linalg.norm(v, ord=1), rtol=1e-10)
    same(cp.linalg.norm(a, ord=np.inf, keepdims=True), np.linalg.norm(x, ord=np.inf, keepdims=True))
    same(cp.linalg.solve(a, w), np.linalg.solve(x, v), rtol=1e-10)
    # the zeros of this identity come out at 1e-16 in either order of operations
    same(cp.linalg.solve(a, a[:, :2]), np.linalg.solve(x, x[:, :2]), rtol=1e-10, atol=1e-12)
    same(cp.linalg.inv(a), np.linalg.inv(x), rtol=1e-10)
    same(cp.linalg.det(a), np.asarray(np.linalg.det(x)), rtol=1e-10)
    stack = np.stack([x, 2 * x])
    same(cp.linalg.inv(cp.array(stack)), np.linalg.inv(stack), rtol=1e-10)
    with pytest.raises(np.linalg.LinAlgError, match="two-dimensional"):
        cp.linalg.det(w)
    with pytest.raises(np.linalg.LinAlgError, match="square"):
        cp.linalg.solve(a[:3], w[:3])
    with pytest.raises(NotImplementedError, match=r"cupy\.linalg\.tensorinv"):
        cp.linalg.tensorinv(a)


def test_a_singular_solve_is_a_linalg_error_on_the_emulator(connected: Daemon) -> None:
    if connected.backend != "emu":
        pytest.skip("CuPy returns non-finite values for a singular matrix (docs/cupy.md)")
    x = cp.linalg.solve(cp.zeros((3, 3)), cp.ones(3))
    with pytest.raises(np.linalg.LinAlgError, match="Singular"):
        x.get()


def test_concatenate_and_stack(connected: Daemon) -> None:
    x, y = host((2, 3)), host((4, 3)).astype(np.float32)
    a, b = cp.array(x), cp.array(y)
    same(cp.concatenate([a, b]), np.concatenate([x, y]))
    same(cp.concatenate([a, a], axis=1), np.concatenate([x, x], axis=1))
    same(cp.concatenate([a, b], axis=None), np.concatenate([x, y], axis=None))
    same(cp.stack([a, a]), np.stack([x, x]))
    same(cp.stack([a, a], axis=-1), np.stack([x, x], axis=-1))
    with pytest.raises(ValueError, match="along dimension 1"):
        cp.concatenate([a, cp.zeros((2, 2))])
    with pytest.raises(ValueError, match="same shape"):
        cp.stack([a, b])
    with pytest.raises(np.exceptions.AxisError):
        cp.concatenate([a, a], axis=2)


def test_eye_diagonal_sorting_rounding_and_closeness(connected: Daemon) -> None:
    x = host((4, 5))
    a = cp.array(x)
    same(cp.eye(3), np.eye(3))
    same(cp.eye(3, 5, k=1, dtype=np.int32), np.eye(3, 5, k=1, dtype=np.int32))
    same(cp.eye(4, k=-2), np.eye(4, k=-2))
    same(cp.identity(2, np.float32), np.identity(2, np.float32))
    same(a.diagonal(1), x.diagonal(1))
    same(cp.trace(a), np.trace(x), rtol=1e-10)
    same(cp.sort(a), np.sort(x))
    same(cp.sort(a, axis=None), np.sort(x, axis=None))
    same(cp.argsort(a, axis=0), np.argsort(x, axis=0))
    b = a.copy()
    b.sort(axis=0)
    same(b, np.sort(x, axis=0))
    same(cp.around(a, 1), np.around(x, 1))
    same(a.round(), x.round())
    same(cp.isclose(a, a + 1e-9), np.isclose(x, x + 1e-9))
    assert bool(cp.allclose(a, a + 1e-9)) and not bool(cp.allclose(a, a + 1))
    assert bool(cp.array_equal(a, a.copy())) and not bool(cp.array_equal(a, a[:2]))
    same(cp.count_nonzero(a > 0), np.asarray(np.count_nonzero(x > 0)))
    same(cp.count_nonzero(a > 0, axis=1), np.count_nonzero(x > 0, axis=1))
    same(cp.array([a[0], a[1]]), np.array([x[0], x[1]]))
    same(np.linalg.norm(a), np.asarray(np.linalg.norm(x)), rtol=1e-10)  # NumPy dispatches to us
    same(np.concatenate([a, a]), np.concatenate([x, x]))


def test_more_views_complex_parts_and_fuse(connected: Daemon) -> None:
    x = host((2, 3, 4))
    a = cp.array(x)
    same(cp.moveaxis(a, 0, -1), np.moveaxis(x, 0, -1))
    same(cp.flip(a, 1), np.flip(x, 1))
    same(cp.fliplr(a[0]), np.fliplr(x[0]))
    same(cp.flipud(a[0]), np.flipud(x[0]))
    same(cp.atleast_2d(a[0, 0, 0]), np.atleast_2d(x[0, 0, 0]))
    same(cp.atleast_3d(a[0]), np.atleast_3d(x[0]))
    same(cp.hstack([a[0], a[1]]), np.hstack([x[0], x[1]]))
    same(cp.vstack([a[0, 0], a[1, 1]]), np.vstack([x[0, 0], x[1, 1]]))
    z = x[0] + 1j * x[1]
    c = cp.array(z)
    same(c.real, z.real)
    same(cp.imag(c), z.imag)
    c.imag[...] = 5  # a view: writes into the complex array
    z.imag[...] = 5
    same(c, z)
    same(cp.real(a), x)
    same(a.imag, np.zeros_like(x))

    @cp.fuse()
    def squared_distance(p: cp.ndarray, q: cp.ndarray) -> cp.ndarray:
        return (p - q) ** 2

    same(squared_distance(a, 1.0), (x - 1.0) ** 2)
    assert cp.fuse(squared_distance) is squared_distance


# host conversions


def test_implicit_host_conversion_is_refused_as_in_cupy(connected: Daemon) -> None:
    a = cp.arange(3)
    with pytest.raises(TypeError, match="Implicit conversion to a NumPy array is not allowed"):
        np.asarray(a)
    with pytest.raises(TypeError, match="Implicit conversion"):
        np.array([a])


def test_scalars_iteration_and_repr(connected: Daemon) -> None:
    data = host((3, 2))
    a = cp.array(data)
    rows = list(a)
    assert len(rows) == 3
    for row, expected in zip(rows, data, strict=True):
        same(row, expected)
    assert len(a) == 3
    assert float(a[1, 1]) == data[1, 1]
    assert int(cp.array([7])) == 7
    assert a[0, 0].item() == data[0, 0]
    assert bool(cp.array(True)) and not bool(cp.array([0]))
    assert complex(a[2, 0]) == complex(data[2, 0])
    assert repr(a) == repr(data)
    assert str(a) == str(data)
    assert f"{a[0, 1]:.3f}" == f"{data[0, 1]:.3f}"
    assert a.tolist() == data.tolist()
    with pytest.raises(ValueError, match="truth value"):
        bool(a)
    with pytest.raises(TypeError, match="iteration over a 0-d array"):
        iter(a[0, 0])
    with pytest.raises(TypeError, match="unsized"):
        len(a[0, 0])
    with pytest.raises(TypeError):
        hash(a)


# random


def test_random_states_are_reproducible(connected: Daemon) -> None:
    first = cp.random.RandomState(42)
    second = cp.random.RandomState(42)
    draws = [first.rand(3, 4), first.normal(1, 2, (5,)), first.randint(0, 10, size=20)]
    again = [second.rand(3, 4), second.normal(1, 2, (5,)), second.randint(0, 10, size=20)]
    for one, two in zip(draws, again, strict=True):
        np.testing.assert_array_equal(one.get(), two.get())
    assert not np.array_equal(cp.random.RandomState(43).rand(3, 4).get(), draws[0].get())
    cp.random.seed(5)
    seeded = cp.random.random((6,)).get()
    cp.random.seed(5)
    np.testing.assert_array_equal(cp.random.random((6,)).get(), seeded)


def test_random_functions_have_cupys_shapes_dtypes_and_ranges(connected: Daemon) -> None:
    cp.random.seed(0)
    u = cp.random.rand(1000)
    assert u.shape == (1000,) and u.dtype == np.float64
    assert 0 <= float(u.min()) and float(u.max()) < 1
    assert cp.random.rand().shape == ()
    n = cp.random.randn(200, 50, dtype=np.float32)
    assert n.dtype == np.float32 and abs(float(n.mean())) < 0.05 and abs(float(n.std()) - 1) < 0.05
    g = cp.random.normal(10.0, 0.5, size=(4000,))
    assert abs(float(g.mean()) - 10) < 0.05
    v = cp.random.uniform(-2, -1, size=(3, 3))
    assert -2 <= float(v.min()) and float(v.max()) < -1
    r = cp.random.randint(3, 7, size=500)
    assert r.dtype == np.int64 and set(r.get().tolist()) == {3, 4, 5, 6}
    assert cp.random.randint(5, size=(2,), dtype=np.int32).dtype == np.int32
    c = cp.random.choice(5, size=50)
    assert c.dtype == np.int64 and set(c.get().tolist()) <= set(range(5))
    population = cp.array([10.0, 20.0, 30.0])
    picked = cp.random.choice(population, 3, replace=False).get()
    assert sorted(picked.tolist()) == [10.0, 20.0, 30.0]
    weighted = cp.random.choice(3, 100, p=cp.array([0.0, 1.0, 0.0]))
    assert set(weighted.get().tolist()) == {1}
    with pytest.raises(TypeError, match="float32 and float64"):
        cp.random.rand(3, dtype=np.int32)
    with pytest.raises(ValueError, match="low >= high"):
        cp.random.randint(5, 5)
    with pytest.raises(ValueError, match="larger sample"):
        cp.random.choice(2, 3, replace=False)


# testing helpers


def test_testing_assertions_take_remote_and_host_arrays(connected: Daemon) -> None:
    data = host((3,))
    a = cp.array(data)
    cp.testing.assert_allclose(a, data)
    cp.testing.assert_allclose(a + 1e-9, a, rtol=1e-6)
    cp.testing.assert_array_equal(a, cp.array(data))
    cp.testing.assert_array_equal(data, a)
    cp.testing.assert_array_almost_equal(a, data + 1e-9)
    cp.testing.assert_array_less(a, a + 1)
    with pytest.raises(AssertionError):
        cp.testing.assert_allclose(a, data + 1)
    with pytest.raises(AssertionError):
        cp.testing.assert_array_equal(a, a * 2)


# what is not covered


def test_unsupported_names_raise_not_implemented_error_naming_them(connected: Daemon) -> None:
    with pytest.raises(
        NotImplementedError, match=r"cupy\.polynomial is not supported.*docs/cupy\.md"
    ):
        cp.polynomial  # noqa: B018
    with pytest.raises(NotImplementedError, match=r"cupy\.random\.multivariate_normal"):
        cp.random.multivariate_normal(cp.zeros(2), cp.eye(2))
    with pytest.raises(NotImplementedError, match=r"cupy\.testing\.assert_warns"):
        cp.testing.assert_warns  # noqa: B018
    assert not hasattr(cp, "einsum_path")  # feature probes answer False rather than fail
    with pytest.raises(NotImplementedError, match="array parameters"):
        cp.random.randint(cp.zeros(3, np.int64), 5)


# batching, devices and the daemon's checks


def test_ten_thousand_in_place_additions_cost_a_few_round_trips(connected: Daemon) -> None:
    x = cp.zeros((), np.float64)
    before = gpupool.stats().round_trips
    for _ in range(10_000):
        x += 1
    assert float(x) == 10_000
    assert gpupool.stats().round_trips - before <= 3


def test_ten_thousand_scalar_additions_cost_a_few_dozen_round_trips(connected: Daemon) -> None:
    x = cp.zeros((), np.float64)
    before = gpupool.stats().round_trips
    for _ in range(10_000):
        x = x + 1
    assert float(x.get()) == 10_000
    assert gpupool.stats().round_trips - before <= 36


def test_arrays_on_a_second_device(connected: Daemon) -> None:
    require_devices(2)
    data = host((3, 3))
    first = cp.array(data)
    rt.setDevice(1)
    try:
        a = cp.array(data)
        assert a.device_id == 1 and first.device_id == 0
        same(a @ a + 1, data @ data + 1, rtol=1e-10)
        r = cp.random.RandomState(3).rand(4)
        assert r.device_id == 1
        with pytest.raises(ValueError, match="one device"):
            a + first
    finally:
        rt.setDevice(0)
    same(a.sum(axis=0), data.sum(axis=0), rtol=1e-10)  # works from any current device
    same(first * 2, data * 2)


def test_arrays_follow_the_device_context(connected: Daemon) -> None:
    require_devices(2)
    with cuda.Device(1):
        a = cp.arange(6).reshape(2, 3)
        stream = cuda.Stream()
        with stream:
            b = (a * 2).sum(axis=0)
        stream.synchronize()
    assert a.device.id == 1 and b.device_id == 1
    same(b, (np.arange(6).reshape(2, 3) * 2).sum(axis=0))


def _submit(op: pb.ArrayOp) -> None:
    gpupool.client.context.current().session().submit(pb.Request(array_op=op))


def test_a_descriptor_outside_the_sessions_memory_is_refused(connected: Daemon) -> None:
    # an allocation of its own (the pool's blocks lie inside arenas the session owns whole)
    a = cp.ndarray(4, np.float64, memptr=cp.cuda.MemoryPointer(cp.cuda.memory.Memory(32), 0))
    a[...] = cp.arange(4, dtype=np.float64)
    outside = pb.ArrayDesc(ptr=4096, shape=[4], strides=[8], dtype="<f8")
    _submit(pb.ArrayOp(function="negative", args=[pb.Operand(array=outside)], out=[outside]))
    with pytest.raises(CUDARuntimeError, match="not inside an allocation") as caught:
        rt.deviceSynchronize()
    assert caught.value.name == "cudaErrorInvalidValue"
    past = pb.ArrayDesc(ptr=addressing.raw(a.data.ptr), shape=[1 << 20], strides=[8], dtype="<f8")
    _submit(pb.ArrayOp(function="negative", args=[pb.Operand(array=past)], out=[past]))
    with pytest.raises(CUDARuntimeError, match="past the end"):
        rt.deviceSynchronize()
    backwards = pb.ArrayDesc(ptr=addressing.raw(a.data.ptr), shape=[4], strides=[-8], dtype="<f8")
    _submit(pb.ArrayOp(function="negative", args=[pb.Operand(array=backwards)], out=[backwards]))
    with pytest.raises(CUDARuntimeError, match="not inside an allocation"):
        rt.deviceSynchronize()
    same(-a, -np.arange(4.0))  # the session, and the daemon, go on


def test_the_daemon_refuses_what_its_table_does_not_hold(connected: Daemon) -> None:
    a = cp.arange(4, dtype=np.float64)
    desc = pb.ArrayDesc(ptr=addressing.raw(a.data.ptr), shape=[4], strides=[8], dtype="<f8")
    _submit(pb.ArrayOp(function="__import__", args=[pb.Operand(text="os")], out=[desc]))
    with pytest.raises(CUDARuntimeError, match="not in the table"):
        rt.deviceSynchronize()
    objects = pb.ArrayDesc(ptr=addressing.raw(a.data.ptr), shape=[4], strides=[8], dtype="|O")
    _submit(pb.ArrayOp(function="negative", args=[pb.Operand(array=objects)], out=[desc]))
    with pytest.raises(TypeError, match="not a numeric dtype"):
        rt.deviceSynchronize()
    keyword = pb.Keyword(name="dtype", value=pb.Operand(text="O"))
    _submit(pb.ArrayOp(function="sum", args=[pb.Operand(array=desc)], kwargs=[keyword], out=[desc]))
    with pytest.raises(TypeError, match="takes no string"):
        rt.deviceSynchronize()
    same(a * 2, np.arange(4.0) * 2)


def test_a_wrong_output_shape_is_refused_not_guessed(connected: Daemon) -> None:
    a = cp.arange(6, dtype=np.float64)
    small = cp.empty(2)
    _submit(
        pb.ArrayOp(
            function="sum",
            args=[pb.Operand(array=descriptor(a.reshape(2, 3)))],
            out=[descriptor(small)],
        )
    )
    with pytest.raises(ValueError, match=re.escape("result of shape () for an output of (2,)")):
        rt.deviceSynchronize()


def test_kept_views_go_when_their_memory_is_freed(connected: Daemon) -> None:
    """The daemon keeps checked views and decoded operations of repeated operations (on the
    GPU too); a freed allocation takes them with it, so the same descriptor is refused."""
    own = cp.cuda.MemoryPointer(cp.cuda.memory.Memory(64), 0)
    a = cp.ndarray(8, np.float64, memptr=own)
    a[...] = cp.arange(8, dtype=np.float64)
    for _ in range(50):
        cp.negative(a, out=a)  # the same operation's bytes, again and again
    same(a, np.arange(8.0))
    desc = descriptor(a)
    ptr = addressing.raw(a.data.ptr)  # the daemon's own address, as it reports it
    del a, own
    gc.collect()
    _submit(pb.ArrayOp(function="negative", args=[pb.Operand(array=desc)], out=[desc]))
    with pytest.raises(CUDARuntimeError, match=f"0x{ptr:x} is not inside an allocation"):
        rt.deviceSynchronize()
    b = cp.arange(8, dtype=np.float64)
    for _ in range(3):
        b = b * 2  # blocks carved from an arena, their descriptors kept
    same(b, np.arange(8.0) * 8)
