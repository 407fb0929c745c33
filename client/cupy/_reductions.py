"""Reductions and scans (``sum`` ... ``cumsum``), computed on the daemon.

The result's dtype, and NumPy's errors for a bad axis or an empty reduction without identity,
come from the NumPy function on a stand-in of at most one element (``_infer``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gpupool.cupy._infer import check_arrays, compute, infer, reduced_shape, stand_in
from gpupool.cupy._ndarray import ndarray
from gpupool.cupy._remote import exact_key, flat_key

# (function, dtype, which dimensions are empty, keepdims, options) -> the result's dtype: what
# the stand-in depends on, so NumPy is asked once (its errors are not kept: asked again)
_DTYPES: dict[Any, np.dtype] = {}


def _array(a: Any, name: str) -> ndarray:
    check_arrays(name, a)
    return a


def _reduce(
    name: str, a: Any, axis: Any, out: Any, keepdims: bool, dtype: Any = None, **extra: Any
) -> ndarray:
    a = _array(a, name)
    given = {"axis": axis, "dtype": None if dtype is None else np.dtype(dtype), **extra}
    options = {key: value for key, value in given.items() if value is not None}
    empty = tuple(1 if n else 0 for n in a.shape)
    options_key, keepdims_key = flat_key(options), exact_key(keepdims)
    exact = options_key is not None and keepdims_key is not None
    key = (name, a.dtype, empty, keepdims_key, options_key) if exact else None
    result_dtype = _DTYPES.get(key) if key is not None else None
    if result_dtype is None:
        numpy_function = getattr(np, name)  # name is one of this module's constant names
        result_dtype = infer(numpy_function, stand_in(a), keepdims=keepdims, **options)
        if key is not None:
            if len(_DTYPES) >= 4096:
                _DTYPES.clear()
            _DTYPES[key] = result_dtype
    shape = reduced_shape(a.shape, axis, keepdims)
    return compute(name, (a,), shape, result_dtype, {**options, "keepdims": keepdims}, out)


def sum(
    a: Any, axis: Any = None, dtype: Any = None, out: Any = None, keepdims: bool = False
) -> ndarray:
    return _reduce("sum", a, axis, out, keepdims, dtype)


def prod(
    a: Any, axis: Any = None, dtype: Any = None, out: Any = None, keepdims: bool = False
) -> ndarray:
    return _reduce("prod", a, axis, out, keepdims, dtype)


def mean(
    a: Any, axis: Any = None, dtype: Any = None, out: Any = None, keepdims: bool = False
) -> ndarray:
    return _reduce("mean", a, axis, out, keepdims, dtype)


def var(
    a: Any,
    axis: Any = None,
    dtype: Any = None,
    out: Any = None,
    ddof: int = 0,
    keepdims: bool = False,
) -> ndarray:
    return _reduce("var", a, axis, out, keepdims, dtype, ddof=ddof or None)


def std(
    a: Any,
    axis: Any = None,
    dtype: Any = None,
    out: Any = None,
    ddof: int = 0,
    keepdims: bool = False,
) -> ndarray:
    return _reduce("std", a, axis, out, keepdims, dtype, ddof=ddof or None)


def amin(a: Any, axis: Any = None, out: Any = None, keepdims: bool = False) -> ndarray:
    return _reduce("amin", a, axis, out, keepdims)


def amax(a: Any, axis: Any = None, out: Any = None, keepdims: bool = False) -> ndarray:
    return _reduce("amax", a, axis, out, keepdims)


def all(a: Any, axis: Any = None, out: Any = None, keepdims: bool = False) -> ndarray:
    return _reduce("all", a, axis, out, keepdims)


def any(a: Any, axis: Any = None, out: Any = None, keepdims: bool = False) -> ndarray:
    return _reduce("any", a, axis, out, keepdims)


def _arg(name: str, a: Any, axis: Any, dtype: Any, out: Any, keepdims: bool) -> ndarray:
    a = _array(a, name)
    infer(getattr(np, name), stand_in(a), axis=axis, keepdims=keepdims)  # NumPy's errors
    shape = reduced_shape(a.shape, axis, keepdims)
    result_dtype = np.dtype(np.intp if dtype is None else dtype)
    return compute(name, (a,), shape, result_dtype, {"axis": axis, "keepdims": keepdims}, out)


def argmin(
    a: Any, axis: Any = None, dtype: Any = None, out: Any = None, keepdims: bool = False
) -> ndarray:
    return _arg("argmin", a, axis, dtype, out, keepdims)


def argmax(
    a: Any, axis: Any = None, dtype: Any = None, out: Any = None, keepdims: bool = False
) -> ndarray:
    return _arg("argmax", a, axis, dtype, out, keepdims)


def _scan(name: str, a: Any, axis: Any, dtype: Any, out: Any) -> ndarray:
    a = _array(a, name)
    dtype = None if dtype is None else np.dtype(dtype)
    result_dtype = infer(getattr(np, name), stand_in(a), axis=axis, dtype=dtype)
    shape = (a.size,) if axis is None else a.shape
    return compute(name, (a,), shape, result_dtype, {"axis": axis, "dtype": dtype}, out)


def cumsum(a: Any, axis: Any = None, dtype: Any = None, out: Any = None) -> ndarray:
    return _scan("cumsum", a, axis, dtype, out)


def cumprod(a: Any, axis: Any = None, dtype: Any = None, out: Any = None) -> ndarray:
    return _scan("cumprod", a, axis, dtype, out)


# CuPy's other names
min = amin
max = amax


def count_nonzero(a: Any, axis: Any = None) -> ndarray:
    """The number of non-zero elements (a 0-d array without ``axis``, as CuPy's)."""
    a = _array(a, "count_nonzero")
    infer(np.count_nonzero, stand_in(a), axis=axis)  # NumPy's errors for the axis
    shape = reduced_shape(a.shape, axis, False)
    return compute("count_nonzero", (a,), shape, np.dtype(np.intp), {"axis": axis})
