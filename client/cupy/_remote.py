"""How array operations reach the daemon: a function name and operands as data, queued.

An operation is one ``ArrayOp`` request: the name of a function in the daemon's table
(server/arrays.py), its operands (array descriptors, Python and NumPy scalars, slices, tuples,
dtypes) and the descriptors of the outputs the client has already allocated. It is queued on
the session of the arrays' device (``Session.submit``) and travels with the next synchronizing
call, so a loop of small operations costs no round trip per operation.

An operation's batch entry is put together from bytes, as a launch's is
(``gpupool.client.launches``): each array's descriptor is serialized once, the field of each
function name once, and a Python number's operand is a few bytes packed; only the rarer
operands (NumPy scalars, slices, dtypes, strings) and keywords go through protobuf messages.
The bytes are exactly protobuf's serialization of the same ``ArrayOp``, which the daemon
parses as any other message.
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from gpupool.client import addressing, context, runtime
from gpupool.cupy import cuda
from gpupool.proto import batch
from gpupool.proto import gpupool_pb2 as pb
from gpupool.proto.scalars import to_scalar

if TYPE_CHECKING:
    from gpupool.cupy._ndarray import ndarray

_INT64 = (-(2**63), 2**63 - 1)


_EXACT = (bool, int, float, str, type(None))


def exact_key(value: Any) -> Any:
    """``value`` as a dictionary key that tells types apart (``1``, ``1.0`` and ``True`` are
    equal keys, but not equal arguments); None for what it cannot take (lists, arrays)."""
    kind = type(value)
    if kind in _EXACT or isinstance(value, np.dtype):  # each dtype has a class of its own
        return kind, value
    if kind is tuple or kind is dict:
        parts = []
        for item in value.items() if kind is dict else value:
            part = exact_key(item)
            if part is None:
                return None
            parts.append(part)
        return kind, tuple(parts)
    return None


def flat_key(options: Mapping[str, Any]) -> Any:
    """:func:`exact_key` of keyword options, cheaper where every value is a plain scalar."""
    key = []
    for name, value in options.items():
        kind = type(value)
        if kind not in _EXACT and not isinstance(value, np.dtype):
            return exact_key(dict(options))
        key.append((name, kind, value))
    return tuple(key)


def current_stream(device: int | None = None) -> int:
    """The handle of ``device``'s current stream (the current device's by default; 0, the null
    stream, where no stream was made current)."""
    return int(cuda.get_current_stream(device).ptr)


@contextlib.contextmanager
def on_device(device: int) -> Iterator[None]:
    """Make ``device`` current for a while (allocations and copies go to the current device)."""
    previous = runtime.getDevice()
    if previous == device:
        yield
        return
    runtime.setDevice(device)
    try:
        yield
    finally:
        runtime.setDevice(previous)


def descriptor(array: ndarray) -> pb.ArrayDesc:
    """The wire form of an array (an array's pointer, shape and strides are fixed)."""
    return pb.ArrayDesc(
        ptr=addressing.raw(array.data.ptr),
        shape=array.shape,
        strides=array.strides,
        dtype=array.dtype.str,
    )


def wire(array: ndarray) -> tuple[bytes, bytes]:
    """An array's two fields in an ``ArrayOp``: as an operand (``args``) and as an output
    (``out``), made on first use and kept with the array (``shape``'s setter drops them).
    Pools hand the same blocks out again and again, so they are also kept by what they
    encode, for the next array with that pointer, shape and strides."""
    fields: tuple[bytes, bytes] | None = array.__dict__.get("_wire")
    if fields is None:
        key = (addressing.raw(array.data.ptr), array._shape, array._strides, array._dtype)
        fields = _WIRES.get(key)
        if fields is None:
            desc = _descriptor_bytes(*key)
            fields = (
                batch.field(_ARGS, batch.field(_OPERAND_ARRAY, desc)),
                batch.field(_OUT, desc),
            )
            if len(_WIRES) >= _MAX_WIRES:
                _WIRES.clear()
            _WIRES[key] = fields
        array.__dict__["_wire"] = fields
    return fields


_WIRES: dict[tuple[Any, ...], tuple[bytes, bytes]] = {}
_MAX_WIRES = 8192
_TAILS: dict[tuple[Any, ...], bytes] = {}  # (shape, strides, dtype) -> their fields


def _descriptor_bytes(
    ptr: int, shape: tuple[int, ...], strides: tuple[int, ...], dtype: np.dtype
) -> bytes:
    """``descriptor(array).SerializeToString()``, from its parts: fields in order, a zero
    pointer and empty shapes left out as protobuf leaves them, repeated ones packed."""
    tail = _TAILS.get((shape, strides, dtype))
    if tail is None:
        tail = b""
        if shape:
            tail += batch.field(_SHAPE, b"".join(map(batch.varint, shape)))
        if strides:
            zigzag = (s << 1 if s >= 0 else (~s << 1) | 1 for s in strides)  # sint64
            tail += batch.field(_STRIDES, b"".join(map(batch.varint, zigzag)))
        tail += batch.field(_DTYPE, dtype.str.encode())
        if len(_TAILS) >= _MAX_WIRES:
            _TAILS.clear()
        _TAILS[shape, strides, dtype] = tail
    return batch.tag(_PTR, batch.VARINT) + batch.varint(ptr) + tail if ptr else tail


def operand(value: Any) -> pb.Operand:
    """The wire form of one argument; TypeError for what no array function takes."""
    from gpupool.cupy._ndarray import ndarray  # the two modules build on each other

    if isinstance(value, ndarray):
        return pb.Operand(array=descriptor(value))
    if isinstance(value, bool):  # before int: a bool is an int
        return pb.Operand(boolean=value)
    if isinstance(value, int):
        if _INT64[0] <= value <= _INT64[1]:
            return pb.Operand(integer=value)
        if 0 <= value < 2**64:
            return pb.Operand(unsigned=value)
        raise OverflowError(f"Python integer {value} is out of bounds for any dtype")
    if isinstance(value, float):
        return pb.Operand(real=value)
    if isinstance(value, complex):
        return pb.Operand(complex=pb.ComplexOperand(real=value.real, imag=value.imag))
    if isinstance(value, np.generic):
        return pb.Operand(scalar=to_scalar(value))
    if isinstance(value, np.dtype):
        return pb.Operand(dtype=value.str)
    if value is None:
        return pb.Operand(none=True)
    if value is Ellipsis:
        return pb.Operand(ellipsis=True)
    if isinstance(value, slice):
        bounds = {
            name: int(bound)
            for name, bound in (("start", value.start), ("stop", value.stop), ("step", value.step))
            if bound is not None
        }
        return pb.Operand(slice=pb.SliceOperand(**bounds))
    if isinstance(value, tuple):
        return pb.Operand(sequence=pb.OperandList(items=[operand(item) for item in value]))
    if isinstance(value, str):
        return pb.Operand(text=value)
    raise TypeError(f"Unsupported type {type(value)}")


_ARGS, _KWARGS, _OUT = (
    pb.ArrayOp.DESCRIPTOR.fields_by_name[f].number for f in ("args", "kwargs", "out")
)
_FUNCTION = pb.ArrayOp.DESCRIPTOR.fields_by_name["function"].number
_STREAM = pb.ArrayOp.DESCRIPTOR.fields_by_name["stream"].number
_GENERATOR = pb.ArrayOp.DESCRIPTOR.fields_by_name["generator"].number
_ARRAY_OP = pb.Request.DESCRIPTOR.fields_by_name["array_op"].number
_OPERAND_ARRAY = pb.Operand.DESCRIPTOR.fields_by_name["array"].number
_PTR, _SHAPE, _STRIDES, _DTYPE = (
    pb.ArrayDesc.DESCRIPTOR.fields_by_name[f].number for f in ("ptr", "shape", "strides", "dtype")
)
_DOUBLE = struct.Struct("<d")
_REAL_TAG = batch.tag(pb.Operand.DESCRIPTOR.fields_by_name["real"].number, batch.FIXED64)
_INTEGER_TAG = batch.tag(pb.Operand.DESCRIPTOR.fields_by_name["integer"].number, batch.VARINT)
_BOOLEAN_TAG = batch.tag(pb.Operand.DESCRIPTOR.fields_by_name["boolean"].number, batch.VARINT)
_NONE = batch.tag(pb.Operand.DESCRIPTOR.fields_by_name["none"].number, batch.VARINT) + b"\x01"


def _real(value: float) -> bytes:
    return batch.field(_ARGS, _REAL_TAG + _DOUBLE.pack(value))


def _integer(value: int) -> bytes:
    if not _INT64[0] <= value <= _INT64[1]:
        return batch.field(_ARGS, operand(value).SerializeToString())  # unsigned, or refused
    zigzag = value << 1 if value >= 0 else (~value << 1) | 1  # sint64
    return batch.field(_ARGS, _INTEGER_TAG + batch.varint(zigzag))


_TRUE = batch.field(_ARGS, _BOOLEAN_TAG + b"\x01")
_FALSE = batch.field(_ARGS, _BOOLEAN_TAG + b"\x00")

# Operands by exact type, packed here: the types nearly every operation's operands have
# (arrays are added by the ndarray module, as their wire fields).
_PACKED: dict[type, Callable[[Any], bytes]] = {
    float: _real,
    int: _integer,
    bool: lambda value: _TRUE if value else _FALSE,
    type(None): lambda value: batch.field(_ARGS, _NONE),
}


def register_array(kind: type) -> None:
    """Pack instances of ``kind`` (exactly: the shim's ndarray) as their kept fields."""
    _PACKED[kind] = lambda array: wire(array)[0]


def _argument(value: Any) -> bytes:
    """One ``args`` field of an ``ArrayOp``."""
    pack = _PACKED.get(type(value))
    if pack is not None:
        return pack(value)
    return batch.field(_ARGS, operand(value).SerializeToString())


_FUNCTIONS: dict[str, bytes] = {}  # function name -> its field, made once a name
_STREAM_TAG = batch.tag(_STREAM, batch.VARINT)
_ARRAY_OP_TAG = batch.tag(_ARRAY_OP, batch.LENGTH_DELIMITED)
_ENTRY_TAG = batch.tag(
    pb.Batch.DESCRIPTOR.fields_by_name["requests"].number, batch.LENGTH_DELIMITED
)
_KEYWORDS: dict[Any, bytes] = {}  # keywords (told apart by type) -> their fields


def _keywords(kwargs: Mapping[str, Any]) -> bytes:
    """The ``kwargs`` fields, kept for keywords of exact types (``axis=1, keepdims=True``)."""
    key = flat_key(kwargs)
    encoded = None if key is None else _KEYWORDS.get(key)
    if encoded is None:
        encoded = b"".join(
            batch.field(_KWARGS, pb.Keyword(name=k, value=operand(v)).SerializeToString())
            for k, v in kwargs.items()
        )
        if key is not None:
            if len(_KEYWORDS) >= 4096:
                _KEYWORDS.clear()
            _KEYWORDS[key] = encoded
    return encoded


def entry(
    function: str,
    args: Sequence[Any],
    kwargs: Mapping[str, Any] | None,
    out: Sequence[ndarray],
    stream: int,
    generator: int = 0,
) -> bytes:
    """The batch entry of ``function(*args, **kwargs)`` into ``out`` on ``stream``: the bytes
    of the ``Request`` protobuf would serialize, with its ``array_op`` fields in order."""
    head = _FUNCTIONS.get(function)
    if head is None:
        head = _FUNCTIONS[function] = batch.field(_FUNCTION, function.encode())
    parts = [head, *map(_argument, args)]
    if kwargs:
        parts.append(_keywords(kwargs))
    parts += [wire(array)[1] for array in out]
    if stream:
        parts.append(_STREAM_TAG + batch.varint(stream))
    if generator:
        parts.append(batch.tag(_GENERATOR, batch.VARINT) + batch.varint(generator))
    body = b"".join(parts)
    request = _ARRAY_OP_TAG + batch.varint(len(body)) + body  # batch.field, inline
    return _ENTRY_TAG + batch.varint(len(request)) + request  # batch.entry, inline


def enqueue(
    function: str,
    device: int,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    out: Sequence[ndarray] = (),
    generator: int = 0,
) -> None:
    """Queue ``function(*args, **kwargs)`` into ``out`` on ``device``; returns at once."""
    queued = entry(function, args, kwargs, out, current_stream(device), generator)
    context.current().session(device).submit_entry(queued)
