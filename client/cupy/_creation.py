"""Making arrays: allocated on the current device, filled by queued operations or copies."""

from __future__ import annotations

import builtins
import math
from typing import Any

import numpy as np

from gpupool.arrayshapes import array_extent
from gpupool.client import runtime
from gpupool.cupy import _remote
from gpupool.cupy._infer import check_arrays
from gpupool.cupy._ndarray import Shape, _resolve_order, ndarray, normalize_order
from gpupool.cupy._support import unsupported
from gpupool.cupy.cuda.memory import MemoryPointer, UnownedMemory


def empty(shape: Shape, dtype: Any = float, order: str = "C") -> ndarray:
    return ndarray(shape, dtype, order=order)


def zeros(shape: Shape, dtype: Any = float, order: str = "C") -> ndarray:
    out = ndarray(shape, dtype, order=order)
    if out.nbytes:
        runtime.memsetAsync(out.data.ptr, 0, out.nbytes, _remote.current_stream())
    return out


def ones(shape: Shape, dtype: Any = float, order: str = "C") -> ndarray:
    return full(shape, 1, dtype, order)


def full(shape: Shape, fill_value: Any, dtype: Any = None, order: str = "C") -> ndarray:
    if dtype is None:
        dtype = fill_value.dtype if isinstance(fill_value, ndarray) else np.array(fill_value).dtype
    out = ndarray(shape, dtype, order=order)
    out[...] = fill_value
    return out


def eye(N: int, M: int | None = None, k: int = 0, dtype: Any = float, order: str = "C") -> ndarray:
    """Ones on the ``k``-th diagonal: zeros, then the diagonal (a view) filled."""
    out = zeros((N, N if M is None else M), dtype, order)
    diagonal = out.diagonal(k)
    if diagonal.size:
        diagonal.fill(1)
    return out


def identity(n: int, dtype: Any = float) -> ndarray:
    return eye(n, dtype=dtype)


def _like(a: ndarray, dtype: Any, order: str, shape: Shape | None) -> ndarray:
    check_arrays("*_like", a)
    order = _resolve_order(a, order) if shape is None else ("F" if order == "F" else "C")
    with _remote.on_device(a.device_id):
        return ndarray(
            a.shape if shape is None else shape, a.dtype if dtype is None else dtype, order=order
        )


def empty_like(
    a: ndarray, dtype: Any = None, order: str = "K", subok: Any = None, shape: Shape | None = None
) -> ndarray:
    return _like(a, dtype, order, shape)


def zeros_like(
    a: ndarray, dtype: Any = None, order: str = "K", subok: Any = None, shape: Shape | None = None
) -> ndarray:
    out = _like(a, dtype, order, shape)
    with _remote.on_device(out.device_id):
        if out.nbytes:
            runtime.memsetAsync(out.data.ptr, 0, out.nbytes, _remote.current_stream())
    return out


def ones_like(
    a: ndarray, dtype: Any = None, order: str = "K", subok: Any = None, shape: Shape | None = None
) -> ndarray:
    return full_like(a, 1, dtype, order, subok, shape)


def full_like(
    a: ndarray,
    fill_value: Any,
    dtype: Any = None,
    order: str = "K",
    subok: Any = None,
    shape: Shape | None = None,
) -> ndarray:
    out = _like(a, dtype, order, shape)
    out[...] = fill_value
    return out


def arange(start: Any, stop: Any = None, step: Any = 1, dtype: Any = None) -> ndarray:
    """Evenly spaced values in ``[start, stop)``; NumPy's length and dtype rules."""
    if stop is None:
        start, stop = 0, start
    for bound in (start, stop, step):
        if not isinstance(bound, int | float | np.integer | np.floating):
            if isinstance(bound, complex | np.complexfloating):
                unsupported("cupy.arange with complex bounds")
            raise TypeError(f"arange bounds must be real numbers, not {type(bound).__name__}")
    if step == 0:
        raise ZeroDivisionError("division by zero")
    dtype = np.array([start, stop, step]).dtype if dtype is None else np.dtype(dtype)
    length = max(0, math.ceil((stop - start) / step))
    out = ndarray((length,), dtype)
    if length:
        _remote.enqueue("arange", out.device_id, (start, stop, step), out=(out,))
    return out


def linspace(
    start: Any,
    stop: Any,
    num: int = 50,
    endpoint: bool = True,
    retstep: bool = False,
    dtype: Any = None,
    axis: int = 0,
) -> Any:
    """``num`` evenly spaced values from ``start`` to ``stop``."""
    if isinstance(start, ndarray) or isinstance(stop, ndarray) or axis != 0:
        unsupported("cupy.linspace with array bounds or an axis")
    if num < 0:
        raise ValueError(f"Number of samples, {num}, must be non-negative.")
    dtype = np.linspace(start, stop, 0).dtype if dtype is None else np.dtype(dtype)
    out = ndarray((num,), dtype)
    if num:
        _remote.enqueue("linspace", out.device_id, (start, stop), {"endpoint": endpoint}, (out,))
    if not retstep:
        return out
    divisions = num - 1 if endpoint else num
    step = (stop - start) / divisions if divisions > 0 else float("nan")
    return out, step


def array(
    obj: Any,
    dtype: Any = None,
    copy: bool = True,
    order: str | None = "K",
    subok: bool = False,
    ndmin: int = 0,
) -> ndarray:
    """A new device array from a host object (a copy over the wire), a device array, or an
    object exposing ``__cuda_array_interface__`` (a view of its memory, then copied if asked)."""
    order = normalize_order(order)
    if not isinstance(obj, ndarray) and hasattr(obj, "__cuda_array_interface__"):
        obj = from_cuda_array_interface(obj)
    if isinstance(obj, list | tuple) and builtins.any(isinstance(each, ndarray) for each in obj):
        from gpupool.cupy._manipulation import stack

        obj = stack([asarray(each) for each in obj])
    if isinstance(obj, ndarray):
        if obj.device_id != runtime.getDevice():
            # an array on the current device (asarray too): the move, a peer copy, is the copy
            obj, copy = obj.copy(order="K" if order in ("A", "K") else order), False
        result = obj.astype(obj.dtype if dtype is None else dtype, order=order, copy=copy)
    else:
        host = np.array(obj, dtype=dtype, order="C")
        if host.dtype.kind not in "biufc":
            raise ValueError(f"Unsupported dtype {host.dtype}")
        if not host.dtype.isnative:  # devices hold native byte order, as CuPy's arrays
            host = host.astype(host.dtype.newbyteorder("="))
        result = ndarray(host.shape, host.dtype)
        result.set(host)
        if order == "F":
            result = asfortranarray(result)
    if result.ndim < ndmin:
        result = result.reshape((1,) * (ndmin - result.ndim) + result.shape)
    return result


def asarray(
    a: Any, dtype: Any = None, order: str | None = None, *, blocking: bool = False
) -> ndarray:
    return array(a, dtype, copy=False, order=order)


def from_cuda_array_interface(obj: Any) -> ndarray:
    """A view of the device memory ``obj`` describes by ``__cuda_array_interface__`` (the
    shim's own arrays' and any other object's holding a pointer of this process's devices)."""
    interface = obj.__cuda_array_interface__
    if interface.get("mask") is not None:
        unsupported("cupy.asarray of a masked __cuda_array_interface__")
    dtype = np.dtype(interface["typestr"])
    shape = tuple(interface["shape"])
    ptr = int(interface["data"][0])
    strides = interface.get("strides")
    view = np.asarray(_Interface(shape, dtype, strides))  # NumPy's own checks of the layout
    low, high = array_extent(ptr, shape, view.strides, dtype.itemsize)
    memory = UnownedMemory(low, high - low, obj)
    return ndarray(shape, dtype, MemoryPointer(memory, ptr - low), view.strides)


def ascontiguousarray(a: Any, dtype: Any = None) -> ndarray:
    return array(a, dtype, copy=False, order="C") if isinstance(a, ndarray) else array(a, dtype)


def asfortranarray(a: Any, dtype: Any = None) -> ndarray:
    if not isinstance(a, ndarray):
        a = array(a, dtype)
    dtype = a.dtype if dtype is None else np.dtype(dtype)
    if a.flags.f_contiguous and dtype == a.dtype:
        return a
    return a.astype(dtype, order="F")


def asnumpy(
    a: Any, stream: Any = None, order: Any = "C", out: Any = None, blocking: bool = True
) -> np.ndarray:
    """A host copy of a device array; host objects as NumPy arrays."""
    if not isinstance(a, ndarray) and hasattr(a, "__cuda_array_interface__"):
        a = from_cuda_array_interface(a)
    if isinstance(a, ndarray):
        return a.get(stream=stream, order=order, out=out)
    return np.asarray(a, order=order)


class _Interface:
    """An ``__array_interface__`` at address 0 with the device array's layout, so that NumPy
    checks the shape and strides and works out C strides where none are given."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype, strides: Any) -> None:
        self.__array_interface__ = {
            "shape": shape,
            "typestr": dtype.str,
            "data": (1 << 44, True),
            "strides": None if strides is None else tuple(strides),
            "version": 3,
        }
