"""Shapes and joins: views made here (no call), joins as copies into one output."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.lib.array_utils import normalize_axis_index

from gpupool.cupy import _remote
from gpupool.cupy._infer import check_arrays, common_device, output_arrays, result_array
from gpupool.cupy._ndarray import layout, ndarray


def reshape(a: ndarray, newshape: Any, order: str = "C") -> ndarray:
    return a.reshape(newshape, order=order)


def ravel(a: ndarray, order: str = "C") -> ndarray:
    return a.ravel(order)


def transpose(a: ndarray, axes: Sequence[int] | None = None) -> ndarray:
    return a.transpose(axes)


def swapaxes(a: ndarray, axis1: int, axis2: int) -> ndarray:
    return a.swapaxes(axis1, axis2)


def squeeze(a: ndarray, axis: int | tuple[int, ...] | None = None) -> ndarray:
    return a.squeeze(axis)


def expand_dims(a: ndarray, axis: int | tuple[int, ...]) -> ndarray:
    return a._view(np.expand_dims(layout(a), axis))


def moveaxis(a: ndarray, source: Any, destination: Any) -> ndarray:
    return a._view(np.moveaxis(layout(a), source, destination))


def flip(m: ndarray, axis: Any = None) -> ndarray:
    return m._view(np.flip(layout(m), axis))


def fliplr(m: ndarray) -> ndarray:
    return m._view(np.fliplr(layout(m)))


def flipud(m: ndarray) -> ndarray:
    return m._view(np.flipud(layout(m)))


def _at_least(numpy_function: Any, arrays: tuple[ndarray, ...]) -> Any:
    check_arrays(numpy_function.__name__, *arrays)
    views = [array._view(numpy_function(layout(array))) for array in arrays]
    return views[0] if len(views) == 1 else views


def atleast_1d(*arys: ndarray) -> Any:
    return _at_least(np.atleast_1d, arys)


def atleast_2d(*arys: ndarray) -> Any:
    return _at_least(np.atleast_2d, arys)


def atleast_3d(*arys: ndarray) -> Any:
    return _at_least(np.atleast_3d, arys)


def hstack(tup: Sequence[ndarray]) -> ndarray:
    arrays = atleast_1d(*tup)
    arrays = [arrays] if isinstance(arrays, ndarray) else arrays
    return concatenate(arrays, axis=0 if arrays[0].ndim == 1 else 1)


def vstack(tup: Sequence[ndarray]) -> ndarray:
    arrays = atleast_2d(*tup)
    return concatenate([arrays] if isinstance(arrays, ndarray) else arrays, axis=0)


def broadcast_to(array: ndarray, shape: Any) -> ndarray:
    return array._view(np.broadcast_to(layout(array), shape))


def concatenate(
    tup: Sequence[ndarray], axis: int | None = 0, out: Any = None, *, dtype: Any = None
) -> ndarray:
    """One array from several along ``axis``: each is copied into its slice of the result."""
    arrays = list(tup)
    if not arrays:
        raise ValueError("need at least one array to concatenate")
    check_arrays("concatenate", *arrays)
    if axis is None:
        arrays, axis = [each.ravel() for each in arrays], 0
    first = arrays[0]
    if first.ndim == 0:
        raise ValueError("zero-dimensional arrays cannot be concatenated")
    axis = normalize_axis_index(axis, first.ndim)
    for index, each in enumerate(arrays[1:], 1):
        if each.ndim != first.ndim:
            raise ValueError(
                "all the input arrays must have same number of dimensions, but the array at"
                f" index 0 has {first.ndim} dimension(s) and the array at index {index} has"
                f" {each.ndim} dimension(s)"
            )
        for dim, (mine, theirs) in enumerate(zip(first.shape, each.shape, strict=True)):
            if dim != axis and mine != theirs:
                raise ValueError(
                    "all the input array dimensions except for the concatenation axis must match"
                    f" exactly, but along dimension {dim}, the array at index 0 has size {mine}"
                    f" and the array at index {index} has size {theirs}"
                )
    device = common_device([*arrays, *output_arrays(out)])
    shape = list(first.shape)
    shape[axis] = sum(each.shape[axis] for each in arrays)
    result_dtype = np.result_type(*(a.dtype for a in arrays)) if dtype is None else np.dtype(dtype)
    result = result_array("concatenate", device, tuple(shape), result_dtype, out)
    start = 0
    for each in arrays:
        where = (slice(None),) * axis + (slice(start, start + each.shape[axis]),)
        _remote.enqueue("assign", device, (each,), out=(result[where],))
        start += each.shape[axis]
    return result


def stack(tup: Sequence[ndarray], axis: int = 0, out: Any = None, *, dtype: Any = None) -> ndarray:
    arrays = list(tup)
    if not arrays:
        raise ValueError("need at least one array to stack")
    if any(not isinstance(each, ndarray) or each.shape != arrays[0].shape for each in arrays):
        raise ValueError("all input arrays must have the same shape")
    axis = normalize_axis_index(axis, arrays[0].ndim + 1)
    return concatenate([expand_dims(each, axis) for each in arrays], axis, out, dtype=dtype)


def diagonal(a: ndarray, offset: int = 0, axis1: int = 0, axis2: int = 1) -> ndarray:
    return a.diagonal(offset, axis1, axis2)


def trace(
    a: ndarray, offset: int = 0, axis1: int = 0, axis2: int = 1, dtype: Any = None, out: Any = None
) -> Any:
    return a.trace(offset, axis1, axis2, dtype, out)


def real(val: ndarray) -> ndarray:
    return val.real


def imag(val: ndarray) -> ndarray:
    return val.imag
