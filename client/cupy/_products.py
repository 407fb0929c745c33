"""Products of arrays (``dot``, ``matmul``, ``inner``, ``outer``), computed on the daemon.

Result shapes follow NumPy's rules for each product (checked here, with NumPy's messages);
dtypes come from the NumPy function on one-element stand-ins.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gpupool.cupy._infer import check_arrays, compute, infer
from gpupool.cupy._ndarray import ndarray
from gpupool.cupy._ufuncs import multiply

_MATMUL = "(n?,k),(k,m?)->(n?,m?)"


def _arrays(name: str, a: Any, b: Any) -> tuple[ndarray, ndarray]:
    check_arrays(name, a, b)
    return a, b


# (product, dtypes and dimensions of its operands) -> its result's dtype: NumPy asked once
_DTYPES: dict[tuple[Any, ...], np.dtype] = {}


def _product(name: str, a: ndarray, b: ndarray, shape: tuple[int, ...], out: Any) -> ndarray:
    key = (name, a.dtype, a.ndim, b.dtype, b.ndim)
    dtype = _DTYPES.get(key)
    if dtype is None:
        ones_a, ones_b = np.ones((1,) * a.ndim, a.dtype), np.ones((1,) * b.ndim, b.dtype)
        dtype = _DTYPES[key] = infer(getattr(np, name), ones_a, ones_b)
    return compute(name, (a, b), shape, dtype, out=out)


def _not_aligned(a: ndarray, b: ndarray, axis_b: int) -> ValueError:
    return ValueError(
        f"shapes {a.shape} and {b.shape} not aligned: {a.shape[-1]} (dim {a.ndim - 1}) !="
        f" {b.shape[axis_b]} (dim {axis_b % b.ndim})"
    )


def dot(a: Any, b: Any, out: Any = None) -> ndarray:
    a, b = _arrays("dot", a, b)
    if a.ndim == 0 or b.ndim == 0:
        result: ndarray = multiply(a, b, out=out)
        return result
    axis_b = 0 if b.ndim == 1 else -2
    if a.shape[-1] != b.shape[axis_b]:
        raise _not_aligned(a, b, axis_b)
    shape = a.shape[:-1] + b.shape[:-2] + b.shape[-1:] if b.ndim > 1 else a.shape[:-1]
    return _product("dot", a, b, shape, out)


def matmul(a: Any, b: Any, out: Any = None) -> ndarray:
    a, b = _arrays("matmul", a, b)
    for index, each in enumerate((a, b)):
        if each.ndim == 0:
            raise ValueError(
                f"matmul: Input operand {index} does not have enough dimensions (has 0, gufunc"
                f" core with signature {_MATMUL} requires 1)"
            )
    left = (1, *a.shape) if a.ndim == 1 else a.shape
    right = (*b.shape, 1) if b.ndim == 1 else b.shape
    if left[-1] != right[-2]:
        raise ValueError(
            f"matmul: Input operand 1 has a mismatch in its core dimension 0, with gufunc"
            f" signature {_MATMUL} (size {right[-2]} is different from {left[-1]})"
        )
    batch = np.broadcast_shapes(left[:-2], right[:-2])
    shape = batch + left[-2:-1] * (a.ndim > 1) + right[-1:] * (b.ndim > 1)
    return _product("matmul", a, b, shape, out)


def inner(a: Any, b: Any) -> ndarray:
    a, b = _arrays("inner", a, b)
    if a.ndim == 0 or b.ndim == 0:
        result: ndarray = multiply(a, b)
        return result
    if a.shape[-1] != b.shape[-1]:
        raise _not_aligned(a, b, -1)
    return _product("inner", a, b, a.shape[:-1] + b.shape[:-1], None)


def outer(a: Any, b: Any, out: Any = None) -> ndarray:
    a, b = _arrays("outer", a, b)
    return _product("outer", a, b, (a.size, b.size), out)
