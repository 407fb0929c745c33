"""Differences, convolutions, products of tensors, matrices built from vectors, grids.

Each is one daemon operation whose result's shape is worked out here from the operands'
shapes (``gpupool.arrayshapes`` where the daemon checks it too) and whose dtype, and NumPy's
argument errors, come from the NumPy function on stand-ins of one element a dimension.
Grids and broadcasts are views made here (no call).
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.lib.array_utils import normalize_axis_index, normalize_axis_tuple

from gpupool import arrayshapes
from gpupool.cupy._infer import broadcast_shape, check_arrays, compute, infer
from gpupool.cupy._ndarray import layout, ndarray


def _ones(array: ndarray, shape: Sequence[int] | None = None) -> np.ndarray:
    """A one-element-a-dimension stand-in of ``array`` (or of ``shape``), for a dtype."""
    return np.ones(tuple(shape) if shape is not None else (1,) * array.ndim, array.dtype)


def gradient(f: Any, *varargs: Any, axis: Any = None, edge_order: int = 1) -> Any:
    """Central differences inside, one-sided at the edges; one array per axis (a list, as
    CuPy returns, when there are several)."""
    check_arrays("gradient", f)
    axes = tuple(range(f.ndim)) if axis is None else normalize_axis_tuple(axis, f.ndim)
    if edge_order > 2:
        raise ValueError("'edge_order' greater than 2 not supported")
    if any(f.shape[ax] < edge_order + 1 for ax in axes):
        raise ValueError(
            "Shape of array too small to calculate a numerical gradient, at least (edge_order"
            " + 1) elements are required."
        )
    if len(varargs) not in (0, 1, len(axes)):
        raise TypeError("invalid number of arguments")
    spacing = varargs if len(varargs) != 1 else varargs * len(axes)
    stand_in_spacing: list[Any] = []
    for ax, step in zip(axes, spacing, strict=False):
        if isinstance(step, ndarray):
            if step.ndim != 1:
                raise ValueError("distances must be either scalars or 1d")
            if step.shape[0] != f.shape[ax]:
                raise ValueError(
                    "when 1d, distances must match the length of the corresponding dimension"
                )
            stand_in_spacing.append(np.arange(edge_order + 1, dtype=step.dtype))
        else:
            if np.ndim(step) != 0:
                raise TypeError("gradient takes scalar spacings or device arrays")
            stand_in_spacing.append(step)
    stand_in = np.ones(tuple(edge_order + 1 for _ in range(f.ndim)), f.dtype)
    gradient_of: Any = np.gradient  # its overloads do not cover varargs of spacings
    sample = gradient_of(stand_in, *stand_in_spacing, axis=axes, edge_order=edge_order)
    dtype = np.asarray(sample[0] if isinstance(sample, tuple | list) else sample).dtype
    from gpupool.cupy import _remote
    from gpupool.cupy._infer import result_array

    outs = tuple(result_array("gradient", f.device_id, f.shape, dtype) for _ in axes)
    options = {"axis": axes, "edge_order": edge_order}
    _remote.enqueue("gradient", f.device_id, (f, *spacing), options, outs)
    return outs[0] if len(outs) == 1 else list(outs)


_CONVOLVE_MODES = ("full", "same", "valid")


def _convolution(name: str, a: Any, v: Any, mode: str) -> ndarray:
    check_arrays(name, a, v)
    if a.ndim != 1 or v.ndim != 1:
        raise ValueError("object too deep for desired array")
    if a.size == 0:
        raise ValueError("a cannot be empty")
    if v.size == 0:
        raise ValueError("v cannot be empty")
    if mode not in _CONVOLVE_MODES:
        raise ValueError(f"mode must be one of {_CONVOLVE_MODES}, not {mode!r}")
    n, m = a.size, v.size
    length = {"full": n + m - 1, "same": max(n, m), "valid": max(n, m) - min(n, m) + 1}[mode]
    dtype = infer(getattr(np, name), _ones(a), _ones(v))
    return compute(name, (a, v), (length,), dtype, {"mode": mode})


def convolve(a: Any, v: Any, mode: str = "full") -> ndarray:
    return _convolution("convolve", a, v, mode)


def correlate(a: Any, v: Any, mode: str = "valid") -> ndarray:
    return _convolution("correlate", a, v, mode)


def kron(a: Any, b: Any) -> ndarray:
    """The Kronecker product: blocks of ``b`` scaled by each element of ``a``."""
    check_arrays("kron", a, b)
    dtype = infer(np.kron, _ones(a), _ones(b))
    return compute("kron", (a, b), arrayshapes.kron_shape(a.shape, b.shape), dtype)


def tensordot(a: Any, b: Any, axes: Any = 2) -> ndarray:
    """Sums of products over ``axes`` (a count of the last/first axes, or two lists)."""
    check_arrays("tensordot", a, b)
    if not isinstance(axes, int):
        axes = tuple(tuple(each) if isinstance(each, Sequence) else each for each in axes)
    shape = arrayshapes.tensordot_shape(a.shape, b.shape, axes)
    dtype = np.result_type(a.dtype, b.dtype)
    return compute("tensordot", (a, b), shape, dtype, {"axes": axes})


def einsum(subscripts: str, *operands: Any, dtype: Any = None, **kwargs: Any) -> ndarray:
    """Einstein summation over the operands (subscripts with ``->`` and ``...``)."""
    if not isinstance(subscripts, str):
        from gpupool.cupy._support import unsupported

        unsupported("cupy.einsum with interleaved operand lists")
    check_arrays("einsum", *operands)
    for key in kwargs:
        if key not in ("optimize", "casting", "order"):
            raise TypeError(f"einsum() got an unexpected keyword argument {key!r}")
    shape = arrayshapes.einsum_shape(subscripts, [op.shape for op in operands])
    result_dtype = (
        np.result_type(*(op.dtype for op in operands)) if dtype is None else np.dtype(dtype)
    )
    options: dict[str, Any] = {"subscripts": subscripts}
    if dtype is not None:
        options["dtype"] = result_dtype
    return compute("einsum", operands, shape, result_dtype, options)


def vander(x: Any, N: int | None = None, increasing: bool = False) -> ndarray:
    """Columns of powers of ``x`` (decreasing unless ``increasing``)."""
    check_arrays("vander", x)
    if x.ndim != 1:
        raise ValueError("x must be a one-dimensional array or sequence.")
    columns = x.size if N is None else operator.index(N)
    if columns < 0:
        raise ValueError("negative dimensions are not allowed")
    dtype = infer(np.vander, _ones(x), 1)
    options = {"N": columns, "increasing": increasing}
    return compute("vander", (x,), (x.size, columns), dtype, options)


def diag(v: Any, k: int = 0) -> ndarray:
    """A vector's square matrix with it on the ``k``-th diagonal, or a matrix's diagonal (a
    view, as CuPy's)."""
    check_arrays("diag", v)
    k = operator.index(k)
    if v.ndim == 2:
        return v.diagonal(k)
    if v.ndim != 1:
        raise ValueError("Input must be 1- or 2-d.")
    size = v.size + abs(k)
    return compute("diag", (v,), (size, size), v.dtype, {"k": k})


def diagflat(v: Any, k: int = 0) -> ndarray:
    check_arrays("diagflat", v)
    k = operator.index(k)
    size = v.size + abs(k)
    return compute("diagflat", (v,), (size, size), v.dtype, {"k": k})


def _triangle(name: str, m: Any, k: int) -> ndarray:
    check_arrays(name, m)
    if m.ndim == 0:
        raise ValueError("input array must be at least 1-d")
    shape = (m.shape[0], m.shape[0]) if m.ndim == 1 else m.shape
    return compute(name, (m,), shape, m.dtype, {"k": operator.index(k)})


def tril(m: Any, k: int = 0) -> ndarray:
    return _triangle("tril", m, k)


def triu(m: Any, k: int = 0) -> ndarray:
    return _triangle("triu", m, k)


def tri(N: int, M: int | None = None, k: int = 0, dtype: Any = float) -> ndarray:
    """Ones at and below the ``k``-th diagonal."""
    from gpupool.cupy._creation import ones

    return tril(ones((N, N if M is None else M), dtype), k)


def nan_to_num(
    x: Any, copy: bool = True, nan: float = 0.0, posinf: Any = None, neginf: Any = None
) -> ndarray:
    """NaN and infinities replaced by numbers (in place with ``copy=False``)."""
    check_arrays("nan_to_num", x)
    options = {"nan": nan, "posinf": posinf, "neginf": neginf}
    options = {key: value for key, value in options.items() if value is not None}
    return compute("nan_to_num", (x,), x.shape, x.dtype, options, None if copy else x)


def roll(a: Any, shift: Any, axis: Any = None) -> ndarray:
    """Elements shifted along ``axis`` (the flattened array for None), wrapping around."""
    check_arrays("roll", a)
    if axis is not None:
        normalize_axis_tuple(axis, a.ndim)  # NumPy's error for a bad axis
        if np.ndim(shift) and np.ndim(axis) and len(shift) != len(axis):
            raise ValueError("'shift' and 'axis' should be scalars or 1D sequences")
    shift = tuple(map(int, shift)) if np.ndim(shift) else operator.index(shift)
    axis = tuple(map(int, axis)) if np.ndim(axis) else axis
    return compute("roll", (a,), a.shape, a.dtype, {"shift": shift, "axis": axis})


def diff(a: Any, n: int = 1, axis: int = -1, prepend: Any = None, append: Any = None) -> ndarray:
    """The ``n``-th differences along ``axis`` (values put before/after first)."""
    check_arrays("diff", a)
    n = operator.index(n)
    if n < 0:
        raise ValueError(f"order must be non-negative but got {n!r}")
    if a.ndim == 0:
        raise ValueError("diff requires input that is at least one dimensional")
    axis = normalize_axis_index(axis, a.ndim)
    if prepend is not None or append is not None:
        a = _extended(a, axis, prepend, append)
    if n == 0:
        return a
    shape = tuple(max(size - n, 0) if i == axis else size for i, size in enumerate(a.shape))
    dtype = infer(np.diff, np.ones(tuple(2 for _ in a.shape), a.dtype), axis=axis)
    return compute("diff", (a,), shape, dtype, {"n": n, "axis": axis})


def _extended(a: ndarray, axis: int, prepend: Any, append: Any) -> ndarray:
    """``a`` with ``prepend`` before and ``append`` after it along ``axis`` (scalars
    broadcast to one slice), as ``numpy.diff`` builds it."""
    from gpupool.cupy._creation import asarray
    from gpupool.cupy._manipulation import broadcast_to, concatenate

    def part(value: Any) -> ndarray:
        extra = value if isinstance(value, ndarray) else asarray(np.asarray(value))
        if extra.ndim == 0:
            shape = tuple(1 if i == axis else size for i, size in enumerate(a.shape))
            extra = broadcast_to(extra, shape)
        return extra

    parts = [
        *([part(prepend)] if prepend is not None else []),
        a,
        *([part(append)] if append is not None else []),
    ]
    return concatenate(parts, axis=axis)


def interp(
    x: Any, xp: Any, fp: Any, left: Any = None, right: Any = None, period: Any = None
) -> ndarray:
    """Piecewise-linear interpolation of the points (``xp``, ``fp``) at ``x``."""
    check_arrays("interp", x, xp, fp)
    if xp.ndim != 1 or fp.ndim != 1:
        raise ValueError("xp and fp must be 1-D sequences")
    if xp.shape != fp.shape:
        raise ValueError("fp and xp are not of the same length")
    if xp.size == 0:
        raise ValueError("array of sample points is empty")
    dtype = np.dtype(np.complex128) if fp.dtype.kind == "c" else np.dtype(np.float64)
    options = {"left": left, "right": right, "period": period}
    options = {key: value for key, value in options.items() if value is not None}
    return compute("interp", (x, xp, fp), x.shape, dtype, options)


def meshgrid(
    *xi: Any, copy: bool = True, sparse: bool = False, indexing: str = "xy"
) -> list[ndarray]:
    """Coordinate grids from coordinate vectors (views unless ``copy``)."""
    if indexing not in ("xy", "ij"):
        raise ValueError("Valid values for `indexing` are 'xy' and 'ij'.")
    check_arrays("meshgrid", *xi)
    ndim = len(xi)
    outputs = []
    for i, x in enumerate(xi):
        shape = [1] * ndim
        shape[i] = x.size
        if indexing == "xy" and ndim > 1 and i < 2:
            shape[0], shape[1] = shape[1], shape[0]
        outputs.append(x.ravel().reshape(tuple(shape)))
    if not sparse:
        outputs = broadcast_arrays(*outputs)
    return [each.copy() for each in outputs] if copy else list(outputs)


def broadcast_arrays(*args: Any) -> list[ndarray]:
    """Views of the arrays broadcast to one shape."""
    check_arrays("broadcast_arrays", *args)
    shape = broadcast_shape(args)
    return [
        arg._view(np.broadcast_to(layout(arg), shape, subok=False)) if arg.shape != shape else arg
        for arg in args
    ]
