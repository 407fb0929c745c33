"""Kernel launches as the client sends them: arguments converted as CuPy converts them, and
each launch encoded as a batch entry ready to queue.

A program launches the same kernel with the same grid, block and stream over and over. The
part of a launch's encoding that depends only on those (and on its arguments' types) is made
once and kept, so a repeated launch costs the conversion of its arguments and a
concatenation: what the daemon's prepared launches (``server/launches.py``) then turn back
into a kernel launch.
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from gpupool.client import addressing
from gpupool.proto import batch
from gpupool.proto import gpupool_pb2 as pb
from gpupool.proto.kernel_args import POINTER
from gpupool.proto.scalars import DTYPE_OF, wire_scalar

Dims = int | Sequence[int]
MAX_HEADS = 256  # configurations kept per function and device; the oldest goes first past this

_POINTER = struct.Struct("<Q")
_FLOAT64 = struct.Struct("<d")
_COMPLEX128 = struct.Struct("<dd")


def _int(value: int) -> tuple[int, bytes]:
    if value >> 62 == 1:  # a device pointer from malloc: the daemon's own address
        return POINTER, _POINTER.pack(addressing.raw(value))
    return pb.INT64, value.to_bytes(8, "little", signed=True)


def _float(value: float) -> tuple[int, bytes]:
    return pb.FLOAT64, _FLOAT64.pack(value)


def _bool(value: bool) -> tuple[int, bytes]:
    return pb.BOOL, b"\x01" if value else b"\x00"


def _complex(value: complex) -> tuple[int, bytes]:
    return pb.COMPLEX128, _COMPLEX128.pack(value.real, value.imag)


def _numpy(code: int) -> Callable[[np.generic], tuple[int, bytes]]:
    """The converter of one NumPy scalar type, whose scalars all have its native dtype."""
    if sys.byteorder != "little":
        return wire_scalar  # swaps the bytes to the wire's order

    def convert(value: np.generic) -> tuple[int, bytes]:
        return code, value.tobytes()

    return convert


def _numpy_word(code: int) -> Callable[[np.generic], tuple[int, bytes]]:
    """A 64-bit NumPy integer: a device pointer made one (``np.uint64(ptr)``) passes as the
    daemon's own address, as a Python int does."""
    plain = _numpy(code)

    def convert(value: np.generic) -> tuple[int, bytes]:
        if int(value) >> 62 == 1:
            return code, _POINTER.pack(addressing.raw(int(value)))
        return plain(value)

    return convert


_WORDS = (np.dtype(np.int64).type, np.dtype(np.uint64).type)

# Converters by exact type, tried first: the types nearly every argument has.
_CONVERT: dict[type, Callable[[Any], tuple[int, bytes]]] = {
    int: _int,
    float: _float,
    bool: _bool,
    complex: _complex,
    **{
        dtype.type: (_numpy_word if dtype.type in _WORDS else _numpy)(code)
        for code, dtype in DTYPE_OF.items()
    },
}


def register_device_array(kind: type, address: Callable[[Any], int]) -> None:
    """Pass instances of ``kind`` (exactly) as their device ``address``, without making
    their ``__cuda_array_interface__`` (a dict) at every launch."""

    def convert(value: Any) -> tuple[int, bytes]:
        return POINTER, _POINTER.pack(addressing.raw(address(value)))

    _CONVERT[kind] = convert


def kernel_arg(value: Any) -> tuple[int, bytes]:
    """The wire form of one kernel argument, its ``ScalarType`` and little-endian bytes,
    converted as CuPy converts it.

    Python ints travel as 64-bit integers (the size of a device pointer, so an address from
    ``malloc`` works as a pointer argument; OverflowError past int64, as in CuPy), floats as
    doubles, bools as bools, complex numbers as complex128; NumPy scalars keep their dtype.
    Objects exposing ``__cuda_array_interface__`` pass their device pointer.
    """
    convert = _CONVERT.get(type(value))
    if convert is not None:
        return convert(value)
    if isinstance(value, np.generic):
        return wire_scalar(value)
    interface = getattr(value, "__cuda_array_interface__", None)
    if interface is not None:
        return POINTER, _POINTER.pack(addressing.raw(interface["data"][0]))
    if isinstance(value, np.ndarray):
        raise TypeError("a host array cannot be a kernel argument: copy it to the device first")
    if isinstance(value, bool):  # subclasses of Python's scalar types: as their base
        return _bool(value)
    if isinstance(value, int):
        return _int(value)
    if isinstance(value, float):
        return _float(value)
    if isinstance(value, complex):
        return _complex(value)
    raise TypeError(f"unsupported kernel argument type: {type(value).__name__}")


def kernel_args(args: Sequence[Any]) -> tuple[bytes, bytes]:
    """A launch's ``arg_types`` and ``arg_data`` (``gpupool.proto.kernel_args``)."""
    codes = []
    data = []
    for value in args:
        code, raw = _CONVERT.get(type(value), kernel_arg)(value)
        codes.append(code)
        data.append(raw)
    return bytes(codes), b"".join(data)


def dim3(dims: Dims) -> pb.Dim3:
    """A grid or block as CUDA's three dimensions."""
    values = (dims,) if isinstance(dims, int) else tuple(dims)
    if not 1 <= len(values) <= 3:
        raise ValueError(f"a grid or block has 1 to 3 dimensions, not {len(values)}")
    x, y, z = (*values, 1, 1)[:3]
    return pb.Dim3(x=x, y=y, z=z)


def _exact(dims: Dims) -> bool:
    """Whether ``dims`` is an int or a tuple of ints, exactly: the grids and blocks whose
    encoding is kept. Anything else (NumPy integers, lists, a float that equals an int) is
    encoded afresh at each launch, so that it is accepted or refused as protobuf decides,
    never taken for an equal key of another type."""
    if type(dims) is int:
        return True
    if type(dims) is not tuple:
        return False
    for value in dims:
        if type(value) is not int:
            return False
    return True


class LaunchEncoder:
    """The launches of one function handle (one device's), encoded as batch entries."""

    def __init__(self, function: int) -> None:
        self.function = function
        self._heads: dict[tuple[Any, ...], bytes] = {}

    def entry(
        self, grid: Dims, block: Dims, args: Sequence[Any], shared_mem: int, stream: int
    ) -> bytes:
        """The batch entry of ``kernel<<<grid, block, shared_mem, stream>>>(*args)``."""
        types, data = kernel_args(args)
        exact = type(shared_mem) is int and type(stream) is int
        if not (exact and _exact(grid) and _exact(block)):
            return self._head(grid, block, shared_mem, stream, types, len(data)) + data
        key = (grid, block, shared_mem, stream, types)
        head = self._heads.get(key)
        if head is None:
            head = self._head(grid, block, shared_mem, stream, types, len(data))
            if len(self._heads) >= MAX_HEADS:
                self._heads.pop(next(iter(self._heads)), None)
            self._heads[key] = head
        return head + data

    def _head(
        self, grid: Dims, block: Dims, shared_mem: int, stream: int, types: bytes, size: int
    ) -> bytes:
        config = pb.LaunchConfig(
            function=self.function,
            grid=dim3(grid),
            block=dim3(block),
            shared_mem=shared_mem,
            stream=stream,
            arg_types=types,
        )
        return batch.launch_entry_head(config.SerializeToString(), size)
