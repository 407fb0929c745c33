"""Indexing: basic keys are views made here (no call); advanced keys are daemon operations.

The shape of an advanced-indexing result depends only on the shapes of the index arrays, so
NumPy computes it here: it indexes a zero-stride stand-in of the array that has one more,
empty, dimension at the end (so the result is empty and nothing is copied) with zero-stride
stand-ins of the index arrays, and that last dimension is dropped from the result's shape.
Only a boolean mask needs its count of True elements, which costs one round trip (CuPy
synchronizes there too). Index values are checked on the daemon (an IndexError arrives at
the next synchronizing call).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gpupool.cupy import _remote
from gpupool.cupy._infer import SCALARS, common_device, compute
from gpupool.cupy._ndarray import layout, ndarray
from gpupool.cupy._support import unsupported


def is_basic(part: Any) -> bool:
    """True for a key part that makes a view: an integer, a slice, None or Ellipsis."""
    if isinstance(part, bool | np.bool_):
        return False
    return part is None or part is Ellipsis or isinstance(part, int | np.integer | slice)


def _parts(key: Any) -> tuple[Any, ...]:
    return key if isinstance(key, tuple) else (key,)


def _is_mask(part: Any) -> bool:
    return isinstance(part, ndarray) and part.dtype == np.bool_


def getitem(array: ndarray, key: Any) -> ndarray:
    parts = _parts(key)
    if all(is_basic(part) for part in parts):
        if not any(part is Ellipsis for part in parts):
            parts += (Ellipsis,)  # a view even where every dimension is indexed away
        return array._view(layout(array)[parts])
    parts = _index_arrays(array, parts)
    stand_ins: list[Any] = []
    for part in parts:
        if _is_mask(part):
            count = int(part.sum(dtype=np.intp))  # a synchronizing call, as in CuPy
            stand_ins += [np.broadcast_to(np.intp(0), (count,))] * part.ndim
        elif isinstance(part, ndarray):
            stand_ins.append(np.broadcast_to(np.zeros((), part.dtype), part.shape))
        else:
            stand_ins.append(part)
    if any(part is Ellipsis for part in parts):
        stand_ins.append(slice(None))  # the ellipsis must not reach the extra dimension
    empty = np.broadcast_to(np.False_, (*array.shape, 0))
    shape = empty[tuple(stand_ins)].shape[:-1]
    return compute("getitem", (array, parts), shape, array.dtype)


def setitem(array: ndarray, key: Any, value: Any) -> None:
    value = _value(array, value)
    parts = _parts(key)
    if all(is_basic(part) for part in parts):
        target = getitem(array, key)
        if isinstance(value, ndarray):
            _check_broadcast(value.shape, target.shape)
        _remote.enqueue("assign", array.device_id, (value,), out=(target,))
        return
    parts = _index_arrays(array, parts)
    _remote.enqueue("setitem", array.device_id, (parts, value), out=(array,))


def check_scalar_fits(value: Any, dtype: np.dtype) -> None:
    """Raise what NumPy raises when ``value`` is stored into an array of ``dtype``."""
    if not isinstance(value, SCALARS):
        raise TypeError(f"Unsupported type {type(value)}")
    np.empty((), dtype)[()] = value


def _value(array: ndarray, value: Any) -> Any:
    """A value to store: a remote array, or a scalar that fits; host arrays are copied over."""
    if isinstance(value, ndarray):
        common_device([array, value])
        return value
    if isinstance(value, list | tuple | np.ndarray):
        from gpupool.cupy._creation import array as to_device

        with _remote.on_device(array.device_id):
            return to_device(value)
    check_scalar_fits(value, array.dtype)
    return value


def _check_broadcast(source: tuple[int, ...], target: tuple[int, ...]) -> None:
    """NumPy's assignment rule: leading 1-long dimensions drop, the rest broadcast."""
    trimmed = source
    while len(trimmed) > len(target) and trimmed[0] == 1:
        trimmed = trimmed[1:]
    try:
        if np.broadcast_shapes(trimmed, target) == target:
            return
    except ValueError:
        pass
    raise ValueError(f"could not broadcast input array from shape {source} into shape {target}")


def _index_arrays(array: ndarray, parts: tuple[Any, ...]) -> tuple[Any, ...]:
    """The key with host index lists and arrays copied to the device, and masks checked."""
    converted: list[Any] = []
    for part in parts:
        if isinstance(part, list | np.ndarray):
            from gpupool.cupy._creation import array as to_device

            host = np.asarray(part)
            if host.size == 0 and isinstance(part, list):
                host = host.astype(np.intp)  # NumPy: an empty list indexes as integers
            with _remote.on_device(array.device_id):
                part = to_device(host)
        elif isinstance(part, bool | np.bool_) or (_is_mask(part) and part.ndim == 0):
            unsupported("indexing with a boolean scalar")
        elif not (is_basic(part) or isinstance(part, ndarray)):
            raise IndexError(
                "only integers, slices (`:`), ellipsis (`...`), numpy.newaxis (`None`) and"
                " integer or boolean arrays are valid indices"
            )
        converted.append(part)
    common_device([array, *(part for part in converted if isinstance(part, ndarray))])
    _check_masks(array, converted)
    return tuple(converted)


def _check_masks(array: ndarray, parts: list[Any]) -> None:
    """The key indexes at most the array's dimensions, and a boolean mask has the shape of the
    dimensions it indexes (NumPy's IndexErrors)."""
    consumed = [0 if p is None or p is Ellipsis else p.ndim if _is_mask(p) else 1 for p in parts]
    if sum(consumed) > array.ndim:
        raise IndexError(
            f"too many indices for array: array is {array.ndim}-dimensional, but"
            f" {sum(consumed)} were indexed"
        )
    ellipsis = next((i for i, part in enumerate(parts) if part is Ellipsis), len(parts))
    for i, part in enumerate(parts):
        if not _is_mask(part):
            continue
        start = sum(consumed[:i]) if i < ellipsis else array.ndim - sum(consumed[i:])
        for axis, size in enumerate(part.shape, start):
            extent = array.shape[axis] if 0 <= axis < array.ndim else None
            if extent != size:
                raise IndexError(
                    f"boolean index did not match indexed array along axis {axis}; size of axis"
                    f" is {extent} but size of corresponding boolean axis is {size}"
                )
