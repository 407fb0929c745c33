"""A binary ufunc's methods (``reduce``, ``accumulate``, ``outer``, ``at``), on the daemon.

Each is one operation named ``NAME.METHOD`` in the daemon's table; shapes follow from the
operands' shapes and the axis, dtypes from NumPy's ufunc method on stand-ins.
"""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING, Any

import numpy as np

from gpupool.cupy import _remote
from gpupool.cupy._infer import check_arrays, compute, infer, meta, reduced_shape, stand_in
from gpupool.cupy._ndarray import ndarray
from gpupool.cupy._support import unsupported

if TYPE_CHECKING:
    from gpupool.cupy._ufuncs import ufunc


def _binary(function: ufunc, method: str) -> None:
    if function.nin != 2:
        raise ValueError(f"{method} only supported for binary functions")
    if function.nout != 1:
        unsupported(f"cupy.{function.name}.{method} (a ufunc of {function.nout} outputs)")


def reduce(function: ufunc, array: Any, axis: Any, dtype: Any, out: Any, keepdims: bool) -> ndarray:
    _binary(function, "reduce")
    check_arrays(f"{function.name}.reduce", array)
    options = {"axis": axis, "keepdims": keepdims}
    if dtype is not None:
        options["dtype"] = np.dtype(dtype)
    result_dtype = infer(function._numpy.reduce, stand_in(array), **options)
    shape = reduced_shape(array.shape, axis, keepdims)
    if array.size == 0 and function._numpy.identity is None:
        raise ValueError(
            f"zero-size array to reduction operation {function.name} which has no identity"
        )
    return compute(f"{function.name}.reduce", (array,), shape, result_dtype, options, out)


def accumulate(function: ufunc, array: Any, axis: int, dtype: Any, out: Any) -> ndarray:
    _binary(function, "accumulate")
    check_arrays(f"{function.name}.accumulate", array)
    if array.ndim == 0:
        raise TypeError("cannot accumulate on a scalar")
    axis = operator.index(axis)
    options: dict[str, Any] = {"axis": axis}
    if dtype is not None:
        options["dtype"] = np.dtype(dtype)
    result_dtype = infer(function._numpy.accumulate, stand_in(array), **options)
    return compute(f"{function.name}.accumulate", (array,), array.shape, result_dtype, options, out)


def outer(function: ufunc, a: Any, b: Any, **kwargs: Any) -> ndarray:
    _binary(function, "outer")
    if kwargs:
        unsupported(f"cupy.{function.name}.outer with {', '.join(sorted(kwargs))}=")
    check_arrays(f"{function.name}.outer", a, b)
    with np.errstate(all="ignore"):
        result_dtype = function._numpy(meta(a), meta(b)).dtype
    return compute(f"{function.name}.outer", (a, b), a.shape + b.shape, result_dtype)


def at(function: ufunc, a: Any, indices: Any, b: Any) -> None:
    check_arrays(f"{function.name}.at", a)
    if function.nin == 2 and b is None:
        raise ValueError("second operand needed for ufunc")
    if function.nout != 1:
        unsupported(f"cupy.{function.name}.at (a ufunc of {function.nout} outputs)")
    key = indices if isinstance(indices, tuple) else (indices,)
    operands: tuple[Any, ...] = (key,) if function.nin == 1 else (key, b)
    _remote.enqueue(f"{function.name}.at", a.device_id, operands, None, (a,))
