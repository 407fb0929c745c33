"""The remote ``ndarray``: a device pointer with a shape, a dtype and strides, as CuPy's.

The contract other modules rely on: ``ndarray(shape, dtype, memptr=None, strides=None)``;
``.data`` is a :class:`~gpupool.cupy.cuda.memory.MemoryPointer` (``.data.ptr`` the device
address, ``.data.device_id`` its ordinal); ``.shape``, ``.dtype``, ``.strides`` (bytes),
``.size``, ``.ndim``, ``.nbytes``; ``.get()``/``.set()`` copy to and from the host; and
``__cuda_array_interface__`` so kernels take it as a pointer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from gpupool.client import runtime
from gpupool.cupy.cuda import memory

Shape = int | Sequence[int]


def _c_strides(shape: tuple[int, ...], itemsize: int) -> tuple[int, ...]:
    strides, step = [], itemsize
    for extent in reversed(shape):
        strides.append(step)
        step *= max(extent, 1)
    return tuple(reversed(strides))


class ndarray:
    """An array on a remote device."""

    def __init__(
        self,
        shape: Shape,
        dtype: Any = float,
        memptr: memory.MemoryPointer | None = None,
        strides: Sequence[int] | None = None,
    ) -> None:
        self._shape = (shape,) if isinstance(shape, int) else tuple(int(n) for n in shape)
        self._dtype = np.dtype(dtype)
        self._strides = (
            _c_strides(self._shape, self._dtype.itemsize) if strides is None else tuple(strides)
        )
        self.data = memory.alloc(self.nbytes) if memptr is None else memptr

    shape = property(lambda self: self._shape)
    dtype = property(lambda self: self._dtype)
    strides = property(lambda self: self._strides)
    ndim = property(lambda self: len(self._shape))
    size = property(lambda self: math.prod(self._shape))
    nbytes = property(lambda self: self.size * self._dtype.itemsize)

    @property
    def __cuda_array_interface__(self) -> dict[str, Any]:
        return {
            "shape": self._shape,
            "typestr": self._dtype.str,
            "data": (self.data.ptr, False),
            "strides": self._strides,
            "version": 3,
        }

    def _is_c_contiguous(self) -> bool:
        return self._strides == _c_strides(self._shape, self._dtype.itemsize)

    def get(self) -> np.ndarray:
        """A host copy (waits for the queued work that writes this array)."""
        if not self._is_c_contiguous():
            raise NotImplementedError("ndarray.get of a non-contiguous array")
        host = np.empty(self._shape, self._dtype)
        if host.nbytes:
            runtime.memcpy(host.ctypes.data, self.data.ptr, host.nbytes, runtime.memcpyDeviceToHost)
        return host

    def set(self, arr: Any) -> None:
        """Copy a host array of the same shape and dtype into this one."""
        host = np.ascontiguousarray(arr, dtype=self._dtype)
        if host.shape != self._shape:
            raise ValueError(f"shape mismatch: {host.shape} into {self._shape}")
        if host.nbytes:
            runtime.memcpy(self.data.ptr, host.ctypes.data, host.nbytes, runtime.memcpyHostToDevice)


def empty(shape: Shape, dtype: Any = float) -> ndarray:
    return ndarray(shape, dtype)


def array(obj: Any, dtype: Any = None) -> ndarray:
    host = np.asarray(obj, dtype=dtype)
    out = ndarray(host.shape, host.dtype)
    out.set(host)
    return out


def asarray(obj: Any, dtype: Any = None) -> ndarray:
    if isinstance(obj, ndarray) and (dtype is None or np.dtype(dtype) == obj.dtype):
        return obj
    return array(obj, dtype)


def asnumpy(a: Any) -> np.ndarray:
    return a.get() if isinstance(a, ndarray) else np.asarray(a)
