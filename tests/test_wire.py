"""Kernel arguments and batches on the wire: every CUDA scalar type survives the trip, whatever
its byte order, and batches the client assembles from bytes are the ones protobuf would make."""

from __future__ import annotations

import enum
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpupool.client.launches import LaunchEncoder, kernel_arg, kernel_args
from gpupool.proto import batch
from gpupool.proto import gpupool_pb2 as pb
from gpupool.proto.kernel_args import POINTER, Signature
from gpupool.proto.scalars import DTYPE_OF, from_scalar, to_scalar


@pytest.mark.parametrize("dtype", list(DTYPE_OF.values()), ids=str)
def test_scalars_round_trip(dtype: np.dtype) -> None:
    value = np.array(3, dtype)[()]
    back = from_scalar(to_scalar(value))
    assert back.dtype == dtype and back == value


def test_other_byte_orders_travel_as_little_endian() -> None:
    swapped = np.array(0x01020304, ">i4")[()]
    assert to_scalar(swapped).data == (0x01020304).to_bytes(4, "little")


def test_python_values_convert_as_cupy_converts_them() -> None:
    assert kernel_arg(-7) == (pb.INT64, (-7).to_bytes(8, "little", signed=True))
    assert kernel_arg(1.5) == (pb.FLOAT64, np.float64(1.5).tobytes())
    assert kernel_arg(True) == (pb.BOOL, b"\x01")
    assert kernel_arg(1j) == (pb.COMPLEX128, np.complex128(1j).tobytes())
    with pytest.raises(TypeError, match="unsupported kernel argument type"):
        kernel_arg("text")
    with pytest.raises(TypeError, match="unsupported kernel argument type"):
        to_scalar(np.datetime64(1, "s"))
    with pytest.raises(OverflowError):
        kernel_arg(1 << 63)  # as np.int64 refuses it


def test_subclasses_of_python_scalars_convert_as_their_base() -> None:
    class Flag(enum.IntEnum):
        ON = 3

    assert kernel_arg(Flag.ON) == kernel_arg(3)
    assert kernel_arg(np.True_) == kernel_arg(True)


@pytest.mark.parametrize("dtype", list(DTYPE_OF.values()), ids=str)
def test_launch_arguments_round_trip_bit_for_bit(dtype: np.dtype) -> None:
    raw = np.random.default_rng(1).integers(0, 256, dtype.itemsize, dtype=np.uint8).tobytes()
    value = np.frombuffer(raw, dtype)[0]  # any bits: NaN payloads too
    types, data = kernel_args([7, value, _Device(0xDEAD00)])
    signature = Signature.parse(types)
    assert signature.size == len(data) == 8 + dtype.itemsize + 8
    first, back, pointer = signature.values(data)
    assert back.dtype == dtype and back.tobytes() == value.tobytes()
    assert (first, pointer, types[2]) == (7, 0xDEAD00, POINTER)


def test_a_signature_names_an_argument_of_no_known_type() -> None:
    with pytest.raises(ValueError, match=r"argument 2 has no known type \(code 0\)"):
        Signature.parse(bytes([pb.INT32, pb.FLOAT32, 0]))


def test_batches_assembled_from_bytes_are_protobufs_own() -> None:
    requests = [
        pb.Request(free=pb.Free(ptr=1 << 40)),
        pb.Request(memcpy_htod=pb.MemcpyHtoD(dst=5, size=300, data=bytes(300))),  # long varints
        pb.Request(wait=True, device_synchronize=pb.DeviceSynchronize()),
    ]
    made = batch.batch(batch.entry(each.SerializeToString()) for each in requests)
    assert pb.Request.FromString(made) == pb.Request(batch=pb.Batch(requests=requests))
    assert batch.batch([]) == pb.Request(batch=pb.Batch()).SerializeToString()


@pytest.mark.parametrize("size", [0, 8, 200])
def test_a_launch_entry_is_its_head_and_its_argument_bytes(size: int) -> None:
    config = pb.LaunchConfig(function=3, grid=pb.Dim3(x=1 << 30, y=1, z=1)).SerializeToString()
    data = bytes(range(size % 256)) * (size // 256) + bytes(range(size % 256))
    entry = batch.launch_entry_head(config, size) + data
    expected = pb.Request(launch=pb.Launch(config=config, arg_data=data))
    assert pb.Request.FromString(batch.batch([entry])).batch.requests[0] == expected


def test_the_encoder_keeps_one_head_per_configuration_and_exact_types_only() -> None:
    encoder = LaunchEncoder(function=9)

    def launched(grid: object, args: tuple[object, ...]) -> pb.Request:
        entry = encoder.entry(grid, (32,), args, 0, 0)  # type: ignore[arg-type]
        (request,) = pb.Request.FromString(batch.batch([entry])).batch.requests
        return request

    first, second = launched((4,), (1, 2.5)), launched((4,), (3, 0.5))
    assert first.launch.config == second.launch.config
    assert kernel_args([3, 0.5]) == (
        pb.LaunchConfig.FromString(second.launch.config).arg_types,
        second.launch.arg_data,
    )
    other_grid = pb.LaunchConfig.FromString(launched((8,), (1, 2.5)).launch.config)
    assert (other_grid.grid.x, other_grid.grid.y) == (8, 1)
    other_types = pb.LaunchConfig.FromString(launched((4,), (1, np.float32(2))).launch.config)
    assert other_types.arg_types == bytes([pb.INT64, pb.FLOAT32])
    assert pb.LaunchConfig.FromString(launched((np.int64(4),), (1, 2.5)).launch.config).grid.x == 4
    with pytest.raises(TypeError):
        launched((4.0,), (1, 2.5))  # equal to a kept grid, but not an int: protobuf refuses it


class _Device:
    def __init__(self, ptr: int) -> None:
        self.__cuda_array_interface__ = {"data": (ptr, False)}


class _At:
    """Device memory at an address, as far as an array's pointer needs (no daemon)."""

    def __init__(self, ptr: int) -> None:
        self.ptr = ptr
        self.device_id = 0


_DTYPES = st.sampled_from([np.dtype(t) for t in ("<f4", "<f8", "<i8", "|b1", "<c8", "|u1")])
_SHAPES = st.lists(st.integers(0, 6), max_size=4).map(tuple)


@st.composite
def _arrays(draw: st.DrawFn) -> Any:
    from gpupool.cupy import cuda
    from gpupool.cupy._ndarray import ndarray

    shape = draw(_SHAPES)
    strides = draw(st.lists(st.integers(-(2**40), 2**40), min_size=len(shape), max_size=len(shape)))
    ptr = draw(st.integers(0, 2**48))
    return ndarray(shape, draw(_DTYPES), cuda.MemoryPointer(_At(ptr), 0), strides)  # type: ignore[arg-type]


_OPERANDS = st.one_of(
    _arrays(),
    st.floats(allow_nan=False),
    st.integers(-(2**63), 2**64 - 1),
    st.booleans(),
    st.none(),
    st.sampled_from([np.float32(1.5), np.int8(-3), slice(1, None, 2), Ellipsis, np.dtype("<f4")]),
    st.tuples(st.integers(-5, 5), _arrays()),
)


@settings(max_examples=200, deadline=None)
@given(
    function=st.sampled_from(["add", "getitem", "random.normal", "x" * 300]),
    args=st.lists(_OPERANDS, max_size=4),
    kwargs=st.dictionaries(st.sampled_from(["axis", "keepdims"]), _OPERANDS, max_size=2),
    out=st.lists(_arrays(), max_size=2),
    stream=st.integers(0, 2**40),
    generator=st.integers(0, 2**20),
)
def test_an_array_operation_is_packed_as_protobuf_serializes_it(
    function: str,
    args: list[Any],
    kwargs: dict[str, Any],
    out: list[Any],
    stream: int,
    generator: int,
) -> None:
    """The shim packs an operation's entry from kept bytes; the daemon parses it as protobuf."""
    from gpupool.cupy import _remote

    packed = _remote.entry(function, args, kwargs, out, stream, generator)
    op = pb.ArrayOp(
        function=function,
        args=[_remote.operand(arg) for arg in args],
        kwargs=[pb.Keyword(name=k, value=_remote.operand(v)) for k, v in kwargs.items()],
        out=[_remote.descriptor(array) for array in out],
        stream=stream,
        generator=generator,
    )
    assert packed == batch.entry(pb.Request(array_op=op).SerializeToString())
    again = [_remote.wire(array) for array in out]  # kept with the array: the same bytes
    assert _remote.entry(function, args, kwargs, out, stream, generator) == packed
    assert again == [_remote.wire(array) for array in out]


def test_an_integer_past_uint64_is_refused_as_for_any_dtype() -> None:
    from gpupool.cupy import _remote

    with pytest.raises(OverflowError, match="out of bounds"):
        _remote.entry("add", [2**64], None, (), 0)
