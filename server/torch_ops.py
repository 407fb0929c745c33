"""ATen operations of the PyTorch shim, on tensors that are views of the session's memory.

Runs in the session's worker, which imports torch only when the first operation arrives (a
CuPy session never loads it). The operator is looked up by name in a table made from
``gpupool.proto.torch_ops`` (names in this source, overloads as torch lists them), never as
an attribute named by the wire. Its tensors are views the backend makes of the session's
own allocations, each checked against them: on the emulator a CPU tensor over the host
memory that is the device's (zero-copy, PyTorch's CPU kernels), on a GPU a CUDA tensor over
the session's ``cudaMalloc`` (PyTorch's CUDA kernels, on the session's stream).

An operation is prepared once per configuration (its bytes, as a launch's): the operator
found, the arguments decoded, and its results worked out on meta tensors and checked against
the outputs the client allocated, so that no operation can write past them or make results
larger than the device. Running it then costs the views and the call; a new result is copied
into its output.
"""

from __future__ import annotations

import contextlib
import math
import struct
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from google.protobuf.message import DecodeError
from torch.utils import _pytree

from gpupool.errors import ArrayFunctionError, CUDARuntimeError
from gpupool.proto import gpupool_pb2 as pb
from gpupool.proto.torch_ops import ATEN, GPUPOOL
from gpupool.server.allocations import AllocationTable
from gpupool.server.backends.base import Backend

MAX_PREPARED = 1024
MAX_DIMS = 64

# PyTorch's dtype names, and the NumPy dtype of the same size that a view is made with (NumPy
# has no bfloat16: its bytes are viewed as uint16 and reinterpreted).
DTYPES: dict[str, tuple[torch.dtype, np.dtype]] = {
    str(dtype).removeprefix("torch."): (dtype, np.dtype(view))
    for dtype, view in (
        (torch.float32, "<f4"),
        (torch.float64, "<f8"),
        (torch.float16, "<f2"),
        (torch.bfloat16, "<u2"),
        (torch.int64, "<i8"),
        (torch.int32, "<i4"),
        (torch.int16, "<i2"),
        (torch.int8, "i1"),
        (torch.uint8, "u1"),
        (torch.bool, "?"),
        (torch.complex64, "<c8"),
        (torch.complex128, "<c16"),
    )
}
MEMORY_FORMATS = {
    "contiguous_format": torch.contiguous_format,
    "preserve_format": torch.preserve_format,
    "channels_last": torch.channels_last,
}
LAYOUTS = {"strided": torch.strided}


class _Slot:
    """Where a tensor goes in a prepared operation: its shape, strides and dtype."""

    __slots__ = ("dtype", "extent", "numpy_dtype", "shape", "strides")

    def __init__(self, message: pb.TorchTensor, max_bytes: int) -> None:
        self.shape = tuple(message.shape)
        self.strides = tuple(message.strides)
        if message.dtype not in DTYPES:
            raise TypeError(f"dtype {message.dtype!r} is not one a device tensor can have")
        self.dtype, self.numpy_dtype = DTYPES[message.dtype]
        if len(self.shape) != len(self.strides) or len(self.shape) > MAX_DIMS:
            raise ValueError(f"tensor of {len(self.shape)} dimensions, {len(self.strides)} strides")
        itemsize = self.numpy_dtype.itemsize
        if math.prod(self.shape) * itemsize > max_bytes:
            raise ValueError(f"tensor of shape {self.shape} spans more than the device's memory")
        if 0 in self.shape:
            self.extent = 0
        else:
            self.extent = (
                sum((n - 1) * s for n, s in zip(self.shape, self.strides, strict=True)) + 1
            ) * itemsize

    def meta(self) -> torch.Tensor:
        return torch.empty_strided(self.shape, self.strides, dtype=self.dtype, device="meta")


class _Prepared:
    """One configuration: its operator, its decoded arguments with tensor slots, its outputs."""

    def __init__(self, ops: TorchOps, message: pb.TorchOpConfig) -> None:
        self.op = ops.operator(message.op)
        self.slots: list[_Slot] = []
        self.args = [self._value(ops, value) for value in message.args]
        self.kwargs = {kw.name: self._value(ops, kw.value) for kw in message.kwargs}
        self.out = [self._slot(ops, tensor) for tensor in message.out]
        if isinstance(self.op, torch._ops.OpOverload):  # not the shim's own (manual_seed)
            if "device" in self.kwargs:  # a factory's: the session's device
                self.kwargs["device"] = ops.device
            self._check_results()
        elif self.slots:
            raise ValueError(f"{message.op} takes no tensors")

    def _slot(self, ops: TorchOps, message: pb.TorchTensor) -> int:
        self.slots.append(_Slot(message, ops.max_bytes))
        return len(self.slots) - 1

    def _value(self, ops: TorchOps, value: pb.TorchValue) -> Any:
        kind = value.WhichOneof("value")
        if kind == "tensor":
            return _TensorRef(self._slot(ops, value.tensor))
        if kind in ("integer", "real", "boolean"):
            return getattr(value, kind)  # one of the three field names above
        if kind == "none":
            return None
        if kind == "list":
            return [self._value(ops, item) for item in value.list.items]
        if kind == "dtype":
            return _lookup(DTYPES, value.dtype, "dtype")[0]
        if kind == "memory_format":
            return _lookup(MEMORY_FORMATS, value.memory_format, "memory format")
        if kind == "layout":
            return _lookup(LAYOUTS, value.layout, "layout")
        if kind == "complex":
            return complex(value.complex.real, value.complex.imag)
        if kind == "text":
            return value.text
        if kind == "cpu_scalar":
            return _cpu_scalar(value.cpu_scalar)
        raise ValueError(f"operand of kind {kind} is not an argument of an ATen operator")

    def bind(self, tensors: Sequence[torch.Tensor]) -> tuple[list[Any], dict[str, Any]]:
        """The arguments with the tensors in their slots."""

        def fill(value: Any) -> Any:
            return tensors[value.slot] if isinstance(value, _TensorRef) else value

        is_ref = _TensorRef.__instancecheck__
        args = _pytree.tree_map(fill, self.args, is_leaf=is_ref)
        kwargs = _pytree.tree_map(fill, self.kwargs, is_leaf=is_ref)
        return args, kwargs

    def _check_results(self) -> None:
        """The operator's new results, on meta tensors, must be the outputs given: the same
        number, shapes and dtypes (so it writes nothing past them, however it was asked)."""
        metas = [slot.meta() for slot in self.slots]
        args, kwargs = self.bind(metas)
        if "device" in kwargs:
            kwargs["device"] = torch.device("meta")
        try:
            results = self.op(*args, **kwargs)
        except (NotImplementedError, RuntimeError) as exc:
            raise ValueError(f"{self.op}: its results cannot be worked out: {exc}") from exc
        new = fresh_results(self.op, results)
        outs = [self.slots[index] for index in self.out]
        if len(new) != len(outs):
            raise ValueError(f"{self.op} gives {len(new)} new results, not {len(outs)} outputs")
        for result, out in zip(new, outs, strict=True):
            if tuple(result.shape) != out.shape or result.dtype != out.dtype:
                raise ValueError(
                    f"{self.op} gives a {result.dtype} result of shape {tuple(result.shape)},"
                    f" not the {out.dtype} output of shape {out.shape}"
                )


class _TensorRef:
    """A tensor slot in a prepared operation's arguments."""

    __slots__ = ("slot",)

    def __init__(self, slot: int) -> None:
        self.slot = slot


def _lookup(table: dict[str, Any], name: str, what: str) -> Any:
    try:
        return table[name]
    except KeyError:
        raise ValueError(f"{what} {name!r} is not one an operator takes here") from None


def _cpu_scalar(message: pb.TorchCpuScalar) -> torch.Tensor:
    dtype = _lookup(DTYPES, message.dtype, "dtype")[0]
    kind = message.WhichOneof("value")
    if kind == "complex":
        value: Any = complex(message.complex.real, message.complex.imag)
    elif kind in ("integer", "real", "boolean"):
        value = getattr(message, kind)  # one of the three field names above
    else:
        raise ValueError("a CPU scalar without a value")
    return torch.tensor(value, dtype=dtype)


def fresh_results(op: Any, results: Any) -> list[torch.Tensor]:
    """The tensors among ``op``'s results that are new (not one of its arguments, which its
    schema marks as aliased), flattened in order (a ``Tensor[]`` result counts each)."""
    returns = op._schema.returns
    if len(returns) == 1:
        results = (results,)
    fresh: list[torch.Tensor] = []
    for schema, result in zip(returns, results or (), strict=False):
        if schema.alias_info is not None:
            continue
        if isinstance(result, torch.Tensor):
            fresh.append(result)
        elif isinstance(result, (list, tuple)):
            fresh += [item for item in result if isinstance(item, torch.Tensor)]
    return fresh


class TorchOps:
    """The ATen operations of one session: its operators, prepared configurations, views."""

    def __init__(self, backend: Backend, allocations: AllocationTable) -> None:
        self._backend = backend
        self._allocations = allocations
        self.max_bytes = backend.properties().total_memory
        self._packets: dict[str, dict[str, Callable[..., Any]]] = {}
        self._prepared: OrderedDict[bytes, _Prepared] = OrderedDict()
        self._cuda = backend.array_module() is not np
        self.device = torch.device("cuda" if self._cuda else "cpu")
        if self._cuda:  # PyTorch's current device made the backend's (CuPy's)
            torch.cuda.set_device(backend.array_module().cuda.Device().id)

    def operator(self, name: str) -> Callable[..., Any]:
        """The operator ``packet.overload`` of the table."""
        packet, _, overload = name.partition(".")
        if packet in GPUPOOL and not overload:
            return self.manual_seed
        if packet not in ATEN:
            raise CUDARuntimeError(
                "cudaErrorNotSupported", f"ATen operator {name!r} is not in the daemon's table"
            )
        overloads = self._packets.get(packet)
        if overloads is None:
            found = getattr(torch.ops.aten, packet)  # a name of the table, not of the wire
            overloads = {each: getattr(found, each) for each in found.overloads()}
            self._packets[packet] = overloads
        try:
            return overloads[overload or "default"]
        except KeyError:
            raise CUDARuntimeError(
                "cudaErrorNotSupported", f"ATen operator {packet} has no overload {overload!r}"
            ) from None

    def run(self, call: pb.TorchOp, stream: object) -> None:
        prepared = self._prepare(call.config)
        count = len(prepared.slots)
        if len(call.pointers) != 8 * count:
            raise CUDARuntimeError(
                "cudaErrorInvalidValue",
                f"{len(call.pointers)} bytes of addresses for {count} tensors",
            )
        try:
            with self._on_stream(stream):
                pointers = struct.unpack(f"<{count}Q", call.pointers)
                tensors = [self._view(s, p) for s, p in zip(prepared.slots, pointers, strict=True)]
                args, kwargs = prepared.bind(tensors)
                results = prepared.op(*args, **kwargs)
                if prepared.out:
                    for result, out in zip(
                        fresh_results(prepared.op, results), prepared.out, strict=True
                    ):
                        tensors[out].copy_(result)
        except (MemoryError, torch.OutOfMemoryError) as exc:
            raise CUDARuntimeError(
                "cudaErrorMemoryAllocation", str(exc) or "out of memory"
            ) from exc
        except (ValueError, IndexError, TypeError, ArithmeticError, RuntimeError) as exc:
            raise ArrayFunctionError.of(exc) from exc

    def manual_seed(self, seed: int) -> None:
        """Seed the session's generator (its worker's own: no other session shares it)."""
        if self._cuda:
            torch.cuda.manual_seed(seed)
        else:
            torch.manual_seed(seed)

    def _prepare(self, config: bytes) -> _Prepared:
        prepared = self._prepared.get(config)
        if prepared is not None:
            self._prepared.move_to_end(config)
            return prepared
        try:
            message = pb.TorchOpConfig.FromString(config)
        except DecodeError as exc:
            raise CUDARuntimeError(
                "cudaErrorInvalidValue", f"a torch operation's configuration: {exc}"
            ) from exc
        try:
            with torch.no_grad():
                prepared = _Prepared(self, message)
        except (ValueError, TypeError, IndexError, OverflowError) as exc:
            raise ArrayFunctionError.of(exc) from exc
        if len(self._prepared) >= MAX_PREPARED:
            self._prepared.popitem(last=False)
        self._prepared[config] = prepared
        return prepared

    def _view(self, slot: _Slot, ptr: int) -> torch.Tensor:
        if not slot.extent:
            return torch.empty(slot.shape, dtype=slot.dtype, device=self.device)
        if ptr % slot.numpy_dtype.alignment:
            raise ValueError(f"tensor at 0x{ptr:x} is not aligned for {slot.dtype}")
        self._allocations.check(ptr, slot.extent, "tensor")
        itemsize = slot.numpy_dtype.itemsize
        byte_strides = tuple(s * itemsize for s in slot.strides)
        array = self._backend.view(ptr, slot.extent, 0, slot.shape, byte_strides, slot.numpy_dtype)
        # NumPy's array shares the emulator's memory; CuPy's, through __cuda_array_interface__
        tensor = (
            torch.from_numpy(array) if isinstance(array, np.ndarray) else torch.as_tensor(array)
        )
        return tensor.view(slot.dtype) if tensor.dtype != slot.dtype else tensor

    @contextlib.contextmanager
    def _on_stream(self, stream: object) -> Iterator[None]:
        """The backend's stream, and on a GPU PyTorch's current stream made the same."""
        with self._backend.on_stream(stream) as current:
            pointer = getattr(current, "ptr", 0)
            if not self._cuda or not pointer:
                yield  # the emulator runs in order; the null stream is PyTorch's default
                return
            with torch.cuda.stream(torch.cuda.ExternalStream(pointer)):
                yield
