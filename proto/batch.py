"""Batches made of requests serialized once, as the client queues them.

A ``Batch`` is protobuf's length-delimited fields one after another, so a request queued in
serialized form joins a batch by concatenation: no message is built, copied into the batch
and serialized again for each queued call. And a launch serialized once for its
configuration (:func:`launch_entry_head`) is, with its argument bytes appended, the whole
entry: a loop of launches costs a concatenation each.

The daemon parses these with protobuf as any other message; tests check the bytes against
protobuf's own serialization.
"""

from __future__ import annotations

from collections.abc import Iterable

from gpupool.proto import gpupool_pb2 as pb

VARINT = 0  # protobuf's wire types: integers and bools,
FIXED64 = 1  # doubles,
LENGTH_DELIMITED = 2  # bytes, strings and embedded messages
_REQUESTS = pb.Batch.DESCRIPTOR.fields_by_name["requests"].number
_BATCH = pb.Request.DESCRIPTOR.fields_by_name["batch"].number
_LAUNCH = pb.Request.DESCRIPTOR.fields_by_name["launch"].number
_CONFIG = pb.Launch.DESCRIPTOR.fields_by_name["config"].number
_ARG_DATA = pb.Launch.DESCRIPTOR.fields_by_name["arg_data"].number
_TORCH_OP = pb.Request.DESCRIPTOR.fields_by_name["torch_op"].number
_TORCH_CONFIG = pb.TorchOp.DESCRIPTOR.fields_by_name["config"].number
_TORCH_POINTERS = pb.TorchOp.DESCRIPTOR.fields_by_name["pointers"].number


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_SMALL = [_encode_varint(value) for value in range(1 << 12)]  # lengths of nearly every entry


def varint(value: int) -> bytes:
    """A non-negative integer as protobuf's base-128 varint."""
    return _SMALL[value] if value < 4096 else _encode_varint(value)


def tag(number: int, wire_type: int) -> bytes:
    """The key protobuf writes before field ``number``."""
    return varint(number << 3 | wire_type)


def field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (bytes, a string or a serialized message)."""
    return varint(number << 3 | LENGTH_DELIMITED) + varint(len(payload)) + payload


def entry(request: bytes) -> bytes:
    """A serialized ``Request`` as one entry of a batch."""
    return field(_REQUESTS, request)


def batch(entries: Iterable[bytes]) -> bytes:
    """The serialized ``Request`` whose batch holds ``entries``, in order."""
    return field(_BATCH, b"".join(entries))


def _entry_head(outer: int, head: int, config: bytes, tail: int, size: int) -> bytes:
    """The batch entry of a request whose field ``outer`` is a message of ``config`` (field
    ``head``) and ``size`` bytes (field ``tail``, last), without those bytes."""
    message = field(head, config) + field(tail, bytes(size))
    whole = entry(field(outer, message))
    return whole[: len(whole) - size]


def launch_entry_head(config: bytes, size: int) -> bytes:
    """The batch entry of a launch of ``config`` with ``size`` bytes of arguments, without
    those bytes: the entry of each such launch is this head followed by its arguments."""
    return _entry_head(_LAUNCH, _CONFIG, config, _ARG_DATA, size)


def torch_op_entry_head(config: bytes, size: int) -> bytes:
    """The batch entry of an ATen operation of ``config`` whose tensor addresses take ``size``
    bytes, without those bytes (``TorchOp``): the entry of each such operation is this head
    followed by its addresses."""
    return _entry_head(_TORCH_OP, _TORCH_CONFIG, config, _TORCH_POINTERS, size)
