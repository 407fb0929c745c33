"""What ``ElementwiseKernel`` and ``ReductionKernel`` share: parameters, types and arguments.

Parameters are written as CuPy writes them (``"T x, raw T y, float32 a"``): a one-letter type
is a placeholder resolved from the dtypes of the array arguments, anything else a NumPy dtype
name. Shapes and strides travel as 64-bit kernel arguments, so one compiled kernel serves
every shape of the same dtypes and number of dimensions; the generated source is compiled on
the daemon (NVRTC on a GPU, g++ in the emulator) once per signature and device.
"""

from __future__ import annotations

import math
import re
import threading
import weakref
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gpupool.client import context, runtime
from gpupool.client.module import Function, Module
from gpupool.cupy._ndarray import ndarray
from gpupool.cupy.cuda.stream import Stream, get_current_stream

# NumPy dtypes as the generated CUDA C names them (CuPy's names).
_C_TYPES = {
    np.dtype(np.bool_): "bool",
    np.dtype(np.int8): "signed char",
    np.dtype(np.uint8): "unsigned char",
    np.dtype(np.int16): "short",
    np.dtype(np.uint16): "unsigned short",
    np.dtype(np.int32): "int",
    np.dtype(np.uint32): "unsigned int",
    np.dtype(np.int64): "long long",
    np.dtype(np.uint64): "unsigned long long",
    np.dtype(np.float16): "float16",
    np.dtype(np.float32): "float",
    np.dtype(np.float64): "double",
}
_Key = tuple[str, str, tuple[str, ...]]  # source, kernel name, options
_NAME = re.compile(r"[A-Za-z_]\w*$")

# Index helpers of the generated code (in the spirit of CuPy's CIndexer and CArray): the loop
# index unravelled over a shape, and an array read through its byte strides.
HELPERS = r"""
#ifdef __CUDACC_RTC__
typedef long ptrdiff_t;  // NVRTC has no <cstddef>; long is ptrdiff_t on the LP64 hosts CUDA runs on
#endif
namespace gpupool_kernel {
template <int ndim> struct Indexer {
  ptrdiff_t size_;
  ptrdiff_t shape_[ndim];
  ptrdiff_t index_[ndim];
  __device__ ptrdiff_t size() const { return size_; }
  __device__ const ptrdiff_t* shape() const { return shape_; }
  __device__ void set(ptrdiff_t i) {
    for (int d = ndim - 1; d >= 0; --d) {
      index_[d] = i % shape_[d];
      i /= shape_[d];
    }
  }
  __device__ const ptrdiff_t (&get() const)[ndim] { return index_; }
};
template <typename T, int ndim> struct Array {
  T* data_;
  ptrdiff_t size_;
  ptrdiff_t shape_[ndim];
  ptrdiff_t strides_[ndim];
  __device__ ptrdiff_t size() const { return size_; }
  __device__ const ptrdiff_t* shape() const { return shape_; }
  __device__ const ptrdiff_t* strides() const { return strides_; }
  __device__ T* data() const { return data_; }
  template <typename Int> __device__ T& operator[](const Int (&index)[ndim]) const {
    char* p = reinterpret_cast<char*>(data_);
    for (int d = 0; d < ndim; ++d) p += static_cast<ptrdiff_t>(index[d]) * strides_[d];
    return *reinterpret_cast<T*>(p);
  }
  __device__ T& operator[](ptrdiff_t i) const {
    char* p = reinterpret_cast<char*>(data_);
    for (int d = ndim - 1; d >= 0; --d) {
      p += (i % shape_[d]) * strides_[d];
      i /= shape_[d];
    }
    return *reinterpret_cast<T*>(p);
  }
};
}  // namespace gpupool_kernel
"""
_FLOAT16_PRELUDE = "#include <cuda_fp16.h>\ntypedef __half float16;\n"


def c_type(dtype: np.dtype) -> str:
    """The CUDA C name of ``dtype``; NotImplementedError for those kernels here cannot take."""
    name = _C_TYPES.get(np.dtype(dtype))
    if name is None:
        raise NotImplementedError(
            f"{dtype} arguments of ElementwiseKernel/ReductionKernel are not supported "
            "(docs/cupy.md)"
        )
    return name


def prelude(dtypes: Sequence[np.dtype]) -> str:
    """What the generated source needs before anything else: half precision if used, helpers."""
    half = any(np.dtype(d) == np.float16 for d in dtypes)
    return (_FLOAT16_PRELUDE if half else "") + HELPERS


@dataclass(frozen=True)
class Param:
    """One parameter: ``[raw] type name``; ``dtype`` is None for a type placeholder."""

    name: str
    ctype: str
    dtype: np.dtype | None
    raw: bool
    is_const: bool


def parse_params(text: str, is_const: bool) -> tuple[Param, ...]:
    """CuPy's parameter list syntax; ValueError naming a malformed entry."""
    params = []
    for entry in (part.split() for part in text.split(",") if part.strip()):
        if len(entry) < 2 or not _NAME.match(entry[-1]) or any(w != "raw" for w in entry[:-2]):
            raise ValueError(f"Syntax error: {' '.join(entry)}")
        type_name, name = entry[-2:]
        if len(type_name) == 1:
            dtype, ctype = None, type_name
        else:
            try:
                dtype = np.dtype(type_name)
            except TypeError as exc:
                raise ValueError(f"unknown type {type_name!r} of parameter {name!r}") from exc
            ctype = c_type(dtype)
        params.append(Param(name, ctype, dtype, "raw" in entry[:-2], is_const))
    names = [p.name for p in params]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate parameter names in {text!r}")
    return tuple(params)


class UserKernel:
    """What ``ElementwiseKernel`` and ``ReductionKernel`` share: parameters and argument checks."""

    def __init__(self, in_params: str, out_params: str, name: str) -> None:
        if not _NAME.match(name):
            raise ValueError(f'Invalid kernel name: "{name}"')
        self.in_params = parse_params(in_params, is_const=True)
        self.out_params = parse_params(out_params, is_const=False)
        self.params = self.in_params + self.out_params
        self.nin, self.nout = len(self.in_params), len(self.out_params)
        self.nargs = self.nin + self.nout
        self.name = self.__name__ = name
        self._sources: dict[Hashable, str] = {}

    def source_for(self, signature: Hashable, generate: Callable[[], str]) -> str:
        """The generated CUDA C for one signature (dtypes, kinds, dimensions), made once."""
        source = self._sources.get(signature)
        if source is None:
            source = self._sources[signature] = generate()
        return source

    def split_arguments(self, args: Sequence[Any]) -> tuple[list[Any], list[Any]]:
        """(inputs, outputs given) after CuPy's checks of the count and the types."""
        if len(args) not in (self.nin, self.nargs):
            raise TypeError(
                f"Wrong number of arguments for {self.name!r}. It must be either {self.nin} "
                f"or {self.nargs} (with outputs), but given {len(args)}."
            )
        for arg in args:
            check_argument(arg)
        return list(args[: self.nin]), list(args[self.nin :])


def is_scalar(value: Any) -> bool:
    return isinstance(value, (bool, int, float, np.generic)) and not isinstance(
        value, (np.complexfloating, np.void)
    )


def check_argument(value: Any) -> None:
    """TypeError, as CuPy's, for what is neither a device array nor a scalar."""
    if not (isinstance(value, ndarray) or is_scalar(value)):
        raise TypeError(f"Unsupported type {type(value)}")


def decide_types(
    in_params: Sequence[Param],
    out_params: Sequence[Param],
    in_dtypes: Sequence[np.dtype | None],
    out_dtypes: Sequence[np.dtype],
) -> tuple[list[np.dtype], list[np.dtype], dict[str, np.dtype]]:
    """Placeholders resolved from the arrays' dtypes, as CuPy resolves them (outputs first,
    when given): (in types, out types, placeholder -> dtype). TypeError on a mismatch."""
    placeholders: dict[str, np.dtype] = {}
    pairs = [*zip(out_params, out_dtypes, strict=False), *zip(in_params, in_dtypes, strict=True)]
    for param, dtype in pairs:
        if dtype is None:
            continue
        if param.dtype is not None:
            if dtype != param.dtype:
                raise TypeError(f"Type is mismatched. {param.name} {dtype} {param.dtype}")
        elif param.ctype in placeholders and placeholders[param.ctype] != dtype:
            raise TypeError(
                f"Type is mismatched. {param.name} {dtype} {placeholders[param.ctype]} "
                f"{param.ctype}"
            )
        else:
            placeholders[param.ctype] = dtype

    def resolve(param: Param) -> np.dtype:
        if param.dtype is not None:
            return param.dtype
        if param.ctype not in placeholders:
            raise TypeError(
                f"Cannot determine the type {param.ctype} of parameter {param.name!r}: "
                "no array argument has it"
            )
        return placeholders[param.ctype]

    return [resolve(p) for p in in_params], [resolve(p) for p in out_params], placeholders


def typedefs(placeholders: dict[str, np.dtype]) -> str:
    return "".join(f"typedef {c_type(d)} {n};\n" for n, d in sorted(placeholders.items()))


def broadcast_strides(array: ndarray, shape: tuple[int, ...]) -> tuple[int, ...]:
    """``array``'s byte strides seen with ``shape`` (broadcast dimensions step 0)."""
    lead = len(shape) - array.ndim
    strides = []
    for axis in range(len(shape)):
        own = axis - lead
        if own < 0 or array.shape[own] == 1:
            strides.append(0)
        else:
            strides.append(array.strides[own])
    return tuple(strides)


def collapse(
    shape: tuple[int, ...], strides: list[tuple[int, ...]]
) -> tuple[tuple[int, ...], list[tuple[int, ...]]]:
    """Merge neighbouring dimensions every array steps through evenly, and drop those of
    extent 1, so that a contiguous loop is one dimension (CuPy's ``reduce_dims``)."""
    kept = [axis for axis, extent in enumerate(shape) if extent != 1]
    if not kept:
        return (1,), [(0,) for _ in strides]
    merged_shape = [shape[kept[0]]]
    merged = [[s[kept[0]]] for s in strides]
    for axis in kept[1:]:
        if all(m[-1] == s[axis] * shape[axis] for m, s in zip(merged, strides, strict=True)):
            merged_shape[-1] *= shape[axis]
            for m, s in zip(merged, strides, strict=True):
                m[-1] = s[axis]
        else:
            merged_shape.append(shape[axis])
            for m, s in zip(merged, strides, strict=True):
                m.append(s[axis])
    return tuple(merged_shape), [tuple(m) for m in merged]


def as_scalar(value: Any, dtype: np.dtype) -> np.generic:
    """A scalar argument converted to its parameter's type."""
    return np.dtype(dtype).type(value)


def int64s(values: Sequence[int]) -> list[np.int64]:
    return [np.int64(v) for v in values]


class CompiledKernels:
    """Sources compiled on the daemons, one module per source and options (loaded per device
    inside), for the life of the connection: module handles are those of its sessions."""

    def __init__(self) -> None:
        self._modules: weakref.WeakKeyDictionary[context.Context, dict[_Key, Module]] = (
            weakref.WeakKeyDictionary()
        )
        self._functions: weakref.WeakKeyDictionary[context.Context, dict[_Key, Function]] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()

    def module(self, source: str, options: Sequence[str]) -> Module:
        """The module of ``source``: compiled on the current device on first use (raising
        CompileError there), then loaded on other devices as they launch its kernels."""
        key = (source, "", tuple(options))
        modules = self._per_connection(self._modules)
        module = modules.get(key)
        if module is None:
            module = modules.setdefault(key, Module.from_source(source, options))
        return module

    def function(self, source: str, name: str, options: Sequence[str]) -> Function:
        """The kernel ``name`` of ``source``'s module (cudaErrorSymbolNotFound if none)."""
        key = (source, name, tuple(options))
        functions = self._per_connection(self._functions)
        function = functions.get(key)
        if function is None:
            found = self.module(source, options).get_function(name)
            function = functions.setdefault(key, found)
        return function

    def _per_connection(
        self, caches: weakref.WeakKeyDictionary[context.Context, dict[_Key, Any]]
    ) -> dict[_Key, Any]:
        current = context.current()
        with self._lock:
            return caches.setdefault(current, {})


COMPILED = CompiledKernels()


def launch(
    function: Function,
    grid: int,
    block: int,
    args: Sequence[Any],
    stream: Stream | None,
    shared_mem: int = 0,
) -> None:
    """Queue a launch on ``stream`` (the current stream by default)."""
    ptr = (get_current_stream() if stream is None else stream).ptr
    function((grid,), (block,), args, shared_mem=shared_mem, stream=ptr)


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def size_of(shape: Sequence[int]) -> int:
    return math.prod(shape)


def check_device(args: Sequence[Any]) -> None:
    """ValueError, as CuPy raises it, when an array argument is not on the current device: the
    kernel runs there, and another device's pointers mean nothing to it."""
    current = runtime.getDevice()
    for arg in args:
        if isinstance(arg, ndarray) and arg.device_id != current:
            raise ValueError(
                f"The device where the array resides ({arg.device_id}) is different from the"
                f" current device ({current}). Peer access is unavailable."
            )
