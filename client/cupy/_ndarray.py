"""The remote ``ndarray``: a device pointer with a shape, a dtype and strides, as CuPy's.

The contract other modules rely on: ``ndarray(shape, dtype, memptr=None, strides=None)``;
``.data`` is a :class:`~gpupool.cupy.cuda.memory.MemoryPointer` (``.data.ptr`` the device
address, ``.data.device_id`` its ordinal); ``.shape``, ``.dtype``, ``.strides`` (bytes),
``.size``, ``.ndim``, ``.nbytes``; ``.get()``/``.set()`` copy to and from the host; and
``__cuda_array_interface__`` so kernels take it as a pointer.

Views (basic indexing, reshape, transpose) cost no call: NumPy itself does the view
arithmetic, on a NumPy array that has this array's shape and strides at a fake address and is
never read (:func:`layout`). Everything that touches the data is an operation on the daemon.
"""

from __future__ import annotations

import math
import operator
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from gpupool.client import runtime
from gpupool.client.launches import register_device_array
from gpupool.cupy import _remote, cuda
from gpupool.cupy._support import unsupported
from gpupool.cupy.cuda import memory

Shape = int | Sequence[int]
_FAKE_ADDRESS = 1 << 44  # where layouts pretend to live: never read or written


class _Layout:
    """An ``__array_interface__`` with an array's shape and strides at the fake address."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype, strides: tuple[int, ...]) -> None:
        self.__array_interface__ = {
            "shape": shape,
            "typestr": dtype.str,
            "data": (_FAKE_ADDRESS, False),
            "strides": strides,
            "version": 3,
        }


def layout(array: ndarray) -> np.ndarray:
    """A NumPy array with ``array``'s shape, dtype and strides whose data must never be read.

    NumPy's views of it (basic indexing, reshape without copy, transpose) are exactly the
    views CuPy makes; :meth:`ndarray._view` turns one back into a remote array. Made once an
    array (``shape``'s setter drops it).
    """
    made: np.ndarray | None = array.__dict__.get("_layout")
    if made is None:
        made = array.__dict__["_layout"] = np.asarray(
            _Layout(array.shape, array.dtype, array.strides)
        )
    return made


def shape_tuple(shape: Any) -> tuple[int, ...]:
    """A shape argument as a tuple, validated as NumPy validates it."""
    dims = (shape,) if isinstance(shape, int | np.integer) else tuple(shape)
    dims = tuple(operator.index(n) for n in dims)
    if any(n < 0 for n in dims):
        raise ValueError("negative dimensions are not allowed")
    return dims


def _contiguous_strides(shape: tuple[int, ...], itemsize: int, order: str) -> tuple[int, ...]:
    dims = shape if order == "C" else shape[::-1]
    strides, step = [], itemsize
    for extent in reversed(dims):
        strides.append(step)
        step *= max(extent, 1)
    strides.reverse()
    return tuple(strides) if order == "C" else tuple(strides[::-1])


_STRIDES: dict[tuple[tuple[int, ...], int], tuple[int, ...]] = {}  # C strides by shape, itemsize


@dataclass(frozen=True)
class Flags:
    """The memory layout flags CuPy's ``ndarray.flags`` has."""

    c_contiguous: bool
    f_contiguous: bool
    owndata: bool

    def __getitem__(self, name: str) -> bool:
        """``flags['C_CONTIGUOUS']``, as NumPy's and CuPy's flags allow."""
        if name.lower() not in ("c_contiguous", "f_contiguous", "owndata"):
            raise KeyError(name)
        return bool(getattr(self, name.lower()))


class ndarray:
    """An array on a remote device."""

    __array_priority__ = 100
    __hash__ = None  # type: ignore[assignment]  # mutable, compared elementwise: unhashable

    def __init__(
        self,
        shape: Shape,
        dtype: Any = float,
        memptr: memory.MemoryPointer | None = None,
        strides: Sequence[int] | None = None,
        order: str = "C",
    ) -> None:
        order = normalize_order(order)
        if order not in ("C", "F"):
            raise ValueError(f"order must be 'C' or 'F', not {order!r}")
        self._shape = shape_tuple(shape)
        self._dtype = np.dtype(dtype)
        self._strides = (
            _contiguous_strides(self._shape, self._dtype.itemsize, order)
            if strides is None
            else tuple(int(s) for s in strides)
        )
        self._owner = memptr is None
        self._base: ndarray | None = None
        self.data = memory.alloc(self.nbytes) if memptr is None else memptr

    @classmethod
    def _result(cls, shape: tuple[int, ...], dtype: np.dtype) -> ndarray:
        """A new C-contiguous array on the current device, from a shape and a dtype already
        checked (an operation's result: made for every operation, so without the checks of
        the constructor)."""
        array = cls.__new__(cls)
        array._shape, array._dtype = shape, dtype
        strides = _STRIDES.get((shape, dtype.itemsize))
        if strides is None:
            strides = _contiguous_strides(shape, dtype.itemsize, "C")
            if len(_STRIDES) >= 4096:
                _STRIDES.clear()
            _STRIDES[shape, dtype.itemsize] = strides
        array._strides = strides
        array._owner = True
        array._base = None
        array.data = memory.alloc(math.prod(shape) * dtype.itemsize)
        return array

    @property
    def shape(self) -> tuple[int, ...]:
        return self._shape

    @shape.setter
    def shape(self, shape: Any) -> None:
        """Reshape in place where a view has the shape (CuPy's AttributeError where not)."""
        try:
            view = np.reshape(layout(self), shape, copy=False)
        except ValueError as exc:
            raise AttributeError(f"incompatible shape: {exc}") from None
        self._shape, self._strides = view.shape, view.strides
        self.__dict__.pop("_wire", None)  # the wire form and the layout have the old shape
        self.__dict__.pop("_layout", None)

    dtype = property(lambda self: self._dtype)
    strides = property(lambda self: self._strides)
    ndim = property(lambda self: len(self._shape))
    size = property(lambda self: math.prod(self._shape))
    itemsize = property(lambda self: self._dtype.itemsize)
    nbytes = property(lambda self: self.size * self._dtype.itemsize)
    device_id = property(lambda self: self.data.device_id)

    @property
    def device(self) -> Any:
        """The ``cuda.Device`` this array lives on."""
        return cuda.Device(self.device_id)

    @property
    def flags(self) -> Flags:
        flags = layout(self).flags
        return Flags(flags.c_contiguous, flags.f_contiguous, self._owner)

    @property
    def __cuda_array_interface__(self) -> dict[str, Any]:
        return {
            "shape": self._shape,
            "typestr": self._dtype.str,
            "data": (self.data.ptr, False),
            "strides": self._strides,
            "version": 3,
        }

    # host copies

    def get(
        self,
        stream: Any = None,
        order: str = "C",
        out: np.ndarray | None = None,
        blocking: bool = True,
    ) -> np.ndarray:
        """A host copy (waits for the queued work that writes this array)."""
        source = self if self.flags.c_contiguous else self.astype(self._dtype, order="C")
        if out is None:
            out = np.empty(self._shape, self._dtype)
        elif out.shape != self._shape or out.dtype != self._dtype or not out.flags.c_contiguous:
            raise ValueError(
                f"out must be a C-contiguous {self._dtype} array of shape {self._shape}"
            )
        if out.nbytes:
            # in the order of the current (or the given) stream, as CuPy's copy_to_host: work
            # queued on a non-blocking stream is not ordered before the null stream's copy
            handle = _remote.current_stream(self.device_id) if stream is None else stream.ptr
            with _remote.on_device(self.device_id):
                runtime.memcpyAsync(
                    out.ctypes.data, source.data.ptr, out.nbytes, runtime.memcpyDeviceToHost, handle
                )  # a device-to-host copy returns once the host array is filled
        return out

    def set(self, arr: Any, stream: Any = None) -> None:
        """Copy a host array of this shape and dtype into this array (queued, no round trip)."""
        host = np.asarray(arr, order="C")
        if host.shape != self._shape:
            raise ValueError(f"Shape mismatch. Old shape: {self._shape}, new shape: {host.shape}")
        if host.dtype != self._dtype:
            raise TypeError(f"{host.dtype} array cannot be set to {self._dtype} array")
        if not self.flags.c_contiguous:
            raise RuntimeError("Cannot set to non-contiguous array")
        if host.nbytes:
            with _remote.on_device(self.device_id):
                runtime.memcpyAsync(
                    self.data.ptr,
                    host,
                    host.nbytes,
                    runtime.memcpyHostToDevice,
                    _remote.current_stream(),
                )

    # views: no call

    def _view(self, view: np.ndarray) -> ndarray:
        """The remote array a view of :func:`layout` (of this array) stands for."""
        offset = view.__array_interface__["data"][0] - _FAKE_ADDRESS
        array = ndarray.__new__(ndarray)  # NumPy made the shape and strides: no checks
        array._shape, array._dtype, array._strides = view.shape, view.dtype, view.strides
        array._owner = False
        array.data = self.data + offset
        array._base = self if self._base is None else self._base  # the owner, as CuPy's
        return array

    @property
    def base(self) -> ndarray | None:
        """The array whose memory this view shares (None for an array that owns its memory)."""
        return self._base

    def reshape(self, *shape: Any, order: str = "C", copy: bool | None = None) -> ndarray:
        dims: Any = (
            shape[0] if len(shape) == 1 and not isinstance(shape[0], int | np.integer) else shape
        )
        layout_order = _resolve_order(self, order)
        # NumPy checks the new shape (and resolves -1) on a zero-stride array of ours
        target = np.reshape(np.broadcast_to(False, self._shape), dims, order=layout_order).shape
        if copy:
            source = self.astype(self._dtype, order=layout_order)
            return source._view(np.reshape(layout(source), target, order=layout_order))
        try:
            return self._view(np.reshape(layout(self), target, order=layout_order, copy=False))
        except ValueError:  # no view has that shape: copy, as NumPy does
            if copy is False:
                raise ValueError("Unable to avoid creating a copy while reshaping.") from None
            contiguous = self.astype(self._dtype, order=layout_order)
            return contiguous._view(np.reshape(layout(contiguous), target, order=layout_order))

    def ravel(self, order: str = "C") -> ndarray:
        return self.reshape(-1, order=order)

    def flatten(self, order: str = "C") -> ndarray:
        return self.copy(order=_resolve_order(self, order)).ravel(order=order)

    def transpose(self, *axes: Any) -> ndarray:
        if len(axes) == 1 and (axes[0] is None or not isinstance(axes[0], int | np.integer)):
            axes = () if axes[0] is None else tuple(axes[0])
        return self._view(layout(self).transpose(*axes))

    T = property(lambda self: self.transpose())

    def swapaxes(self, axis1: int, axis2: int) -> ndarray:
        return self._view(layout(self).swapaxes(axis1, axis2))

    def squeeze(self, axis: int | tuple[int, ...] | None = None) -> ndarray:
        return self._view(layout(self).squeeze(axis))

    @property
    def real(self) -> ndarray:
        """The real parts (a view; the array itself when it is not complex)."""
        return self._view(layout(self).real) if self._dtype.kind == "c" else self

    @property
    def imag(self) -> ndarray:
        """The imaginary parts: a view of a complex array, else zeros (as NumPy, read-only)."""
        if self._dtype.kind == "c":
            return self._view(layout(self).imag)
        with _remote.on_device(self.device_id):
            zeros = ndarray(self._shape, self._dtype)
        _remote.enqueue("assign", self.device_id, (0,), out=(zeros,))
        return zeros

    def diagonal(self, offset: int = 0, axis1: int = 0, axis2: int = 1) -> ndarray:
        return self._view(layout(self).diagonal(offset, axis1, axis2))

    def view(self, dtype: Any = None) -> ndarray:
        """A view of the same memory, reinterpreted as ``dtype`` (NumPy's rules and errors
        for the last axis)."""
        if dtype is None:
            return self._view(layout(self))
        if isinstance(dtype, type) and issubclass(dtype, np.ndarray | ndarray):
            unsupported("ndarray.view with an array type")
        return self._view(layout(self).view(np.dtype(dtype)))

    # copies: queued operations

    def astype(
        self,
        dtype: Any,
        order: str = "K",
        casting: Any = None,
        subok: Any = None,
        copy: bool = True,
    ) -> ndarray:
        dtype = np.dtype(dtype)
        if self._dtype.kind == "c" and dtype.kind != "c":
            warnings.warn(
                "Casting complex values to real discards the imaginary part",
                np.exceptions.ComplexWarning,
                stacklevel=2,
            )
        if casting is not None and not np.can_cast(self._dtype, dtype, casting):
            raise TypeError(
                f"Cannot cast array data from {self._dtype!r} to {dtype!r} according to the"
                f" rule {casting!r}"
            )
        if not copy and dtype == self._dtype and _has_order(self, order):
            return self
        with _remote.on_device(self.device_id):
            out = ndarray(self._shape, dtype, order=_resolve_order(self, order))
        _remote.enqueue("assign", self.device_id, (self,), out=(out,))
        return out

    def copy(self, order: str = "C") -> ndarray:
        """A copy on the current device, as CuPy's (the way to move an array between devices:
        a peer copy, worker to worker, even when the other device is on another daemon)."""
        current = runtime.getDevice()
        if current == self.device_id:
            return self.astype(self._dtype, order=order)
        layout_order = _resolve_order(self, order)
        # made contiguous on its own device first, then moved whole
        source = self if self.flags.c_contiguous else self.astype(self._dtype, order="C")
        moved = ndarray(self._shape, self._dtype)  # on the current device
        moved.data.copy_from_device_async(source.data, self.nbytes)
        return moved if layout_order == "C" else moved.astype(self._dtype, order="F")

    def fill(self, value: Any) -> None:
        _indexing.check_scalar_fits(value, self._dtype)
        _remote.enqueue("assign", self.device_id, (value,), out=(self,))

    # indexing

    def __getitem__(self, key: Any) -> ndarray:
        return _indexing.getitem(self, key)

    def __setitem__(self, key: Any, value: Any) -> None:
        _indexing.setitem(self, key, value)

    def __copy__(self) -> ndarray:
        """A copy of the data on the array's device, as CuPy's (not a second array object on
        the same memory)."""
        return self.astype(self._dtype)

    def __deepcopy__(self, memo: dict[int, Any]) -> ndarray:
        return self.astype(self._dtype)

    def __reduce__(self) -> tuple[Any, tuple[np.ndarray]]:
        """Pickled as its host copy, as CuPy's: a device address means nothing elsewhere, and
        unpickling one would free the same memory twice."""
        from gpupool.cupy._creation import array

        return array, (self.get(),)

    def __getattr__(self, name: str) -> Any:
        """CuPy's other ndarray names raise NotImplementedError naming them (never missing
        silently); private and special names stay AttributeError for Python's probes."""
        if name.startswith("_"):
            raise AttributeError(f"'ndarray' object has no attribute {name!r}")
        unsupported(f"cupy.ndarray.{name}")

    def __iter__(self) -> Iterator[ndarray]:
        if not self._shape:
            raise TypeError("iteration over a 0-d array")
        return (self[i] for i in range(self._shape[0]))

    def __len__(self) -> int:
        if not self._shape:
            raise TypeError("len() of unsized object")
        return self._shape[0]

    # reductions and products, as methods (the functions are in their modules)

    def sum(
        self, axis: Any = None, dtype: Any = None, out: Any = None, keepdims: bool = False
    ) -> Any:
        return _reductions.sum(self, axis, dtype, out, keepdims)

    def prod(
        self, axis: Any = None, dtype: Any = None, out: Any = None, keepdims: bool = False
    ) -> Any:
        return _reductions.prod(self, axis, dtype, out, keepdims)

    def mean(
        self, axis: Any = None, dtype: Any = None, out: Any = None, keepdims: bool = False
    ) -> Any:
        return _reductions.mean(self, axis, dtype, out, keepdims)

    def var(
        self,
        axis: Any = None,
        dtype: Any = None,
        out: Any = None,
        ddof: int = 0,
        keepdims: bool = False,
    ) -> Any:
        return _reductions.var(self, axis, dtype, out, ddof, keepdims)

    def std(
        self,
        axis: Any = None,
        dtype: Any = None,
        out: Any = None,
        ddof: int = 0,
        keepdims: bool = False,
    ) -> Any:
        return _reductions.std(self, axis, dtype, out, ddof, keepdims)

    def min(self, axis: Any = None, out: Any = None, keepdims: bool = False) -> Any:
        return _reductions.amin(self, axis, out, keepdims)

    def max(self, axis: Any = None, out: Any = None, keepdims: bool = False) -> Any:
        return _reductions.amax(self, axis, out, keepdims)

    def argmin(
        self, axis: Any = None, out: Any = None, dtype: Any = None, keepdims: bool = False
    ) -> Any:
        return _reductions.argmin(self, axis, dtype, out, keepdims)

    def argmax(
        self, axis: Any = None, out: Any = None, dtype: Any = None, keepdims: bool = False
    ) -> Any:
        return _reductions.argmax(self, axis, dtype, out, keepdims)

    def all(self, axis: Any = None, out: Any = None, keepdims: bool = False) -> Any:
        return _reductions.all(self, axis, out, keepdims)

    def any(self, axis: Any = None, out: Any = None, keepdims: bool = False) -> Any:
        return _reductions.any(self, axis, out, keepdims)

    def cumsum(self, axis: Any = None, dtype: Any = None, out: Any = None) -> Any:
        return _reductions.cumsum(self, axis, dtype, out)

    def cumprod(self, axis: Any = None, dtype: Any = None, out: Any = None) -> Any:
        return _reductions.cumprod(self, axis, dtype, out)

    def trace(
        self, offset: int = 0, axis1: int = 0, axis2: int = 1, dtype: Any = None, out: Any = None
    ) -> Any:
        return _reductions.sum(self.diagonal(offset, axis1, axis2), -1, dtype, out)

    def sort(self, axis: int = -1, kind: Any = None) -> None:
        """Sort in place (the sorted copy made on the daemon is written back)."""
        self[...] = _sorting.sort(self, axis, kind)

    def argsort(self, axis: int | None = -1, kind: Any = None) -> Any:
        return _sorting.argsort(self, axis, kind)

    def round(self, decimals: int = 0, out: Any = None) -> Any:
        return _ufuncs.around(self, decimals, out)

    def nonzero(self) -> Any:
        return _searching.nonzero(self)

    def searchsorted(self, v: Any, side: str = "left", sorter: Any = None) -> Any:
        return _searching.searchsorted(self, v, side, sorter)

    def partition(self, kth: Any, axis: int = -1) -> None:
        """Partition in place (the partitioned copy made on the daemon is written back)."""
        self[...] = _searching.partition(self, kth, axis)

    def argpartition(self, kth: Any, axis: int = -1) -> Any:
        return _searching.argpartition(self, kth, axis)

    def ptp(self, axis: Any = None, out: Any = None, keepdims: bool = False) -> Any:
        return _statistics.ptp(self, axis, out, keepdims)

    def clip(self, min: Any = None, max: Any = None, out: Any = None) -> Any:
        return _ufuncs.clip(self, min, max, out)

    def dot(self, b: Any, out: Any = None) -> Any:
        return _products.dot(self, b, out)

    def conj(self) -> Any:
        return _ufuncs.conjugate(self)

    # host conversions: explicit only, as in CuPy

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        raise TypeError(
            "Implicit conversion to a NumPy array is not allowed. "
            "Please use `.get()` to construct a NumPy array explicitly."
        )

    def __array_ufunc__(self, ufunc: np.ufunc, method: str, *inputs: Any, **kwargs: Any) -> Any:
        ours = _ufuncs.BY_NUMPY_NAME.get(ufunc.__name__)
        if ours is None:  # CuPy has it (its ufuncs are NumPy's): say so, not a TypeError
            unsupported(f"cupy.{ufunc.__name__}")
        if method != "__call__":
            unsupported(f"cupy.{ufunc.__name__}.{method}")
        return ours(*inputs, **kwargs)

    def __array_function__(
        self, func: Callable[..., Any], types: Any, args: Any, kwargs: Any
    ) -> Any:
        import gpupool.cupy

        module = {"numpy": gpupool.cupy, "numpy.linalg": gpupool.cupy.linalg}.get(func.__module__)
        if module is None:
            return NotImplemented
        # a name the shim lacks raises NotImplementedError naming it (the module's __getattr__)
        return getattr(module, func.__name__)(*args, **kwargs)

    def _scalar(self) -> np.ndarray:
        if self.size != 1:
            raise TypeError("only size-1 arrays can be converted to Python scalars")
        return self.get().reshape(())

    def item(self) -> Any:
        if self.size != 1:
            raise ValueError("can only convert an array of size 1 to a Python scalar")
        return self.get().item()

    def tolist(self) -> Any:
        return self.get().tolist()

    def __float__(self) -> float:
        return float(self._scalar())

    def __int__(self) -> int:
        return int(self._scalar())

    def __complex__(self) -> complex:
        return complex(self._scalar())

    def __bool__(self) -> bool:
        if self.size != 1:
            raise ValueError(
                "The truth value of an array with more than one element is ambiguous."
                " Use a.any() or a.all()"
            )
        return bool(self.get().reshape(()))

    def __repr__(self) -> str:
        return repr(self.get())

    def __str__(self) -> str:
        return str(self.get())

    def __format__(self, spec: str) -> str:
        return format(self.get(), spec)

    # operators (bound below)

    def __matmul__(self, other: Any) -> Any:
        return _products.matmul(self, other)

    def __rmatmul__(self, other: Any) -> Any:
        return _products.matmul(other, self)

    def __imatmul__(self, other: Any) -> Any:
        return _products.matmul(self, other, out=self)

    def __divmod__(self, other: Any) -> Any:
        return _ufuncs.divmod(self, other)

    def __rdivmod__(self, other: Any) -> Any:
        return _ufuncs.divmod(other, self)

    def __neg__(self) -> ndarray:
        return _ufuncs.negative(self)

    def __pos__(self) -> ndarray:
        return _ufuncs.positive(self)

    def __abs__(self) -> ndarray:
        return _ufuncs.absolute(self)

    def __invert__(self) -> ndarray:
        return _ufuncs.invert(self)


# Python's operator name -> the ufunc behind it (its reflected and in-place forms too).
_OPERATORS = {
    "add": "add",
    "sub": "subtract",
    "mul": "multiply",
    "truediv": "true_divide",
    "floordiv": "floor_divide",
    "mod": "remainder",
    "pow": "power",
    "and": "bitwise_and",
    "or": "bitwise_or",
    "xor": "bitwise_xor",
    "lshift": "left_shift",
    "rshift": "right_shift",
}
_COMPARISONS = {
    "eq": "equal",
    "ne": "not_equal",
    "lt": "less",
    "le": "less_equal",
    "gt": "greater",
    "ge": "greater_equal",
}


def _bind_operators() -> None:
    def forward(name: str) -> Callable[[ndarray, Any], Any]:
        return lambda self, other: _ufuncs.BY_NAME[name](self, other)

    def reflected(name: str) -> Callable[[ndarray, Any], Any]:
        return lambda self, other: _ufuncs.BY_NAME[name](other, self)

    def in_place(name: str) -> Callable[[ndarray, Any], Any]:
        return lambda self, other: _ufuncs.BY_NAME[name](self, other, out=self)

    for op, ufunc_name in _OPERATORS.items():
        setattr(ndarray, f"__{op}__", forward(ufunc_name))
        setattr(ndarray, f"__r{op}__", reflected(ufunc_name))
        setattr(ndarray, f"__i{op}__", in_place(ufunc_name))
    for op, ufunc_name in _COMPARISONS.items():
        setattr(ndarray, f"__{op}__", forward(ufunc_name))


_bind_operators()


def normalize_order(order: str | None) -> str:
    """An order argument as NumPy reads it: None is 'K', lowercase letters are accepted."""
    if order is None:
        return "K"
    if not isinstance(order, str):
        raise TypeError(f"order must be a string, not {type(order).__name__}")
    return order.upper()


def _has_order(array: ndarray, order: str) -> bool:
    """True when ``array`` is laid out as ``order`` asks ('A' and 'K' take any layout)."""
    order = normalize_order(order)
    flags = layout(array).flags
    return {"C": flags.c_contiguous, "F": flags.f_contiguous}.get(order, True)


def _resolve_order(array: ndarray, order: str) -> Literal["C", "F"]:
    """'C' or 'F' for an order argument ('A' and 'K' follow the array's own layout)."""
    order = normalize_order(order)
    if order in ("A", "K"):
        flags = layout(array).flags
        return "F" if flags.f_contiguous and not flags.c_contiguous else "C"
    if order == "C":
        return "C"
    if order == "F":
        return "F"
    raise ValueError(f"order must be one of 'C', 'F', 'A', or 'K' (got {order!r})")


# A kernel argument of every launch: its pointer, without a __cuda_array_interface__ each time.
register_device_array(ndarray, lambda array: array.data.ptr)
_remote.register_array(ndarray)  # an operand of every array operation: its kept wire fields

# These build on ndarray; imported last so that either side may be imported first.
from gpupool.cupy import (  # noqa: E402
    _indexing,
    _products,
    _reductions,
    _searching,
    _sorting,
    _statistics,
    _ufuncs,
)
