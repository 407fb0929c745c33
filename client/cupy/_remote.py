"""How array operations reach the daemon: a function name and operands as data, queued.

An operation is one ``ArrayOp`` request: the name of a function in the daemon's table
(server/arrays.py), its operands (array descriptors, Python and NumPy scalars, slices, tuples,
dtypes) and the descriptors of the outputs the client has already allocated. It is queued on
the session of the arrays' device (``Session.submit``) and travels with the next synchronizing
call, so a loop of small operations costs no round trip per operation.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from gpupool.client import addressing, context, runtime
from gpupool.cupy import cuda
from gpupool.proto import gpupool_pb2 as pb
from gpupool.proto.scalars import to_scalar

if TYPE_CHECKING:
    from gpupool.cupy._ndarray import ndarray

_INT64 = (-(2**63), 2**63 - 1)


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
    """The wire form of an array (made once: an array's pointer, shape and strides are fixed)."""
    desc: pb.ArrayDesc | None = array.__dict__.get("_descriptor")
    if desc is None:
        desc = array.__dict__["_descriptor"] = pb.ArrayDesc(
            ptr=addressing.raw(array.data.ptr),
            shape=array.shape,
            strides=array.strides,
            dtype=array.dtype.str,
        )
    return desc


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


def enqueue(
    function: str,
    device: int,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    out: Sequence[ndarray] = (),
    generator: int = 0,
) -> None:
    """Queue ``function(*args, **kwargs)`` into ``out`` on ``device``; returns at once."""
    op = pb.ArrayOp(
        function=function,
        args=[operand(arg) for arg in args],
        kwargs=[pb.Keyword(name=k, value=operand(v)) for k, v in (kwargs or {}).items()],
        out=[descriptor(array) for array in out],
        stream=current_stream(device),
        generator=generator,
    )
    context.current().session(device).submit(pb.Request(array_op=op))
