"""Every ATen operation on a pool tensor: worked out here, queued for the daemon.

An operation's *signature* is its operator and its arguments' kinds and values, with each
tensor reduced to its layout (dtype, shape, strides, offset, ordinal). The first time a
signature is seen, the operator runs on meta tensors of the same layouts: that gives its
results' shapes, dtypes and strides without touching data, and its schema says which
results are new, which are its (mutated) arguments and which are views of them. The
outcome is a :class:`Plan`, kept per signature, so that a training loop's operations cost a
signature, a dictionary lookup, the outputs' allocations (from the pool) and a queued batch
entry each: the configuration's bytes, made once, and the tensors' addresses.

- Views (``view``, ``t``, ``transpose``, ``expand``, slicing, ``detach``) move no data: the
  result is a new wrapper over the same device memory, and nothing is sent.
- Operators of the daemon's table (``gpupool.proto.torch_ops``) are queued; the daemon runs
  them at the next synchronizing call.
- Where the result is a value PyTorch needs now (``item()``, ``equal``), where its shape
  depends on the data (``nonzero``, boolean masks) or where the operator is not in the
  table, the operation runs on the host: its tensors are copied there and the results back
  (a round trip; counted in :data:`HOST_OPS`).
- Copies between the host and the device (``to``, ``copy_``, ``cpu()``) are copies: a copy to
  the device is queued, one to the host waits for its data.
"""

from __future__ import annotations

import ctypes
import struct
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils import _pytree

from gpupool.proto import batch
from gpupool.proto import gpupool_pb2 as pb
from gpupool.proto.torch_ops import ATEN
from gpupool.torch._device import DEVICES, DeviceState, allocate, read, write
from gpupool.torch._tensor import RemoteTensor

aten = torch.ops.aten
MAX_PLANS = 8192
HOST_OPS: Counter[str] = Counter()  # operators that ran on the host, by name

_ATOMS = frozenset(
    {int, float, bool, str, complex, type(None), torch.dtype, torch.memory_format, torch.layout}
)
_MEMORY_FORMATS = {
    torch.contiguous_format: "contiguous_format",
    torch.preserve_format: "preserve_format",
    torch.channels_last: "channels_last",
}
# Operators that only allocate: their results need no call (the memory is uninitialized).
_ALLOCATING = frozenset(
    {
        aten.empty.memory_format,
        aten.empty_strided.default,
        aten.empty_like.default,
        aten.new_empty.default,
        aten.new_empty_strided.default,
    }
)


class DeviceMismatch(RuntimeError):
    """Tensors of one operation on different devices: PyTorch's own error (a RuntimeError),
    raised before anything is queued."""


def _signature(value: Any, tensors: list[RemoteTensor]) -> Any:
    """``value`` as a hashable key, its device tensors appended to ``tensors`` in order."""
    kind = type(value)
    if kind is RemoteTensor:
        tensors.append(value)
        return value._key
    if kind in _ATOMS:
        return (kind, value)
    if kind is list or kind is tuple:
        return (kind, *[_signature(item, tensors) for item in value])
    if kind is torch.device:
        return value
    if isinstance(value, RemoteTensor):  # a Parameter's class, say
        tensors.append(value)
        return value._key
    if isinstance(value, torch.Tensor):
        if value.device.type == "cpu" and value.dim() == 0:  # PyTorch lets these join
            return ("cpu", value.dtype, value.item())
        raise DeviceMismatch(
            f"Expected all tensors to be on the same device, but found a {value.device} tensor"
            " among gpupool tensors"
        )
    raise TypeError(f"gpupool.torch: an argument of type {kind.__name__} is not supported")


def _key(func: Any, args: Sequence[Any], kwargs: dict[str, Any], tensors: list) -> Any:
    kwargs_key = tuple((name, _signature(value, tensors)) for name, value in kwargs.items())
    return (func, _signature(args, tensors), kwargs_key)


# Wire form of arguments (made once per plan).


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _tensor_message(tensor: torch.Tensor) -> pb.TorchTensor:
    return pb.TorchTensor(
        shape=tuple(tensor.shape), strides=tensor.stride(), dtype=_dtype_name(tensor.dtype)
    )


def _value(value: Any) -> pb.TorchValue:
    if isinstance(value, RemoteTensor):
        return pb.TorchValue(tensor=_tensor_message(value))
    if isinstance(value, torch.Tensor):  # a CPU scalar, by value
        scalar = pb.TorchCpuScalar(dtype=_dtype_name(value.dtype))
        number = value.item()
        if isinstance(number, bool):
            scalar.boolean = number
        elif isinstance(number, int):
            scalar.integer = number
        elif isinstance(number, float):
            scalar.real = number
        else:
            scalar.complex.real, scalar.complex.imag = number.real, number.imag
        return pb.TorchValue(cpu_scalar=scalar)
    if isinstance(value, bool):
        return pb.TorchValue(boolean=value)
    if isinstance(value, int):
        return pb.TorchValue(integer=value)
    if isinstance(value, float):
        return pb.TorchValue(real=value)
    if isinstance(value, complex):
        return pb.TorchValue(complex=pb.ComplexOperand(real=value.real, imag=value.imag))
    if value is None or isinstance(value, torch.device):  # the daemon puts its own device
        return pb.TorchValue(none=True)
    if isinstance(value, str):
        return pb.TorchValue(text=value)
    if isinstance(value, (list, tuple)):
        return pb.TorchValue(list=pb.TorchValueList(items=[_value(item) for item in value]))
    if isinstance(value, torch.dtype):
        return pb.TorchValue(dtype=_dtype_name(value))
    if isinstance(value, torch.memory_format):
        return pb.TorchValue(memory_format=_MEMORY_FORMATS[value])
    if isinstance(value, torch.layout):
        if value != torch.strided:
            raise NotImplementedError(f"gpupool tensors are strided, not {value}")
        return pb.TorchValue(layout="strided")
    raise TypeError(f"gpupool.torch: an argument of type {type(value).__name__} is not supported")


# Meta tensors of the same layouts.


def _meta(value: Any) -> Any:
    if isinstance(value, RemoteTensor):
        size = value.storage_offset() + _extent(value.shape, value.stride())
        storage = torch.empty(size, dtype=value.dtype, device="meta")
        return storage.as_strided(value.shape, value.stride(), value.storage_offset())
    if isinstance(value, torch.device) and value.type == "gpupool":
        return torch.device("meta")
    return value


def _extent(shape: Sequence[int], strides: Sequence[int]) -> int:
    """Elements a layout spans (0 when empty)."""
    if 0 in shape:
        return 0
    return sum((n - 1) * s for n, s in zip(shape, strides, strict=True)) + 1


def _ordinal(tensors: Sequence[RemoteTensor], kwargs: dict[str, Any]) -> int:
    """The device an operation runs on: its tensors' (one), else its ``device`` argument's."""
    if tensors:
        index = tensors[0]._index
        for tensor in tensors:
            if tensor._index != index:
                raise DeviceMismatch(
                    "Expected all tensors to be on the same device, but found at least two"
                    f" devices, gpupool:{index} and gpupool:{tensor._index}!"
                )
        return index
    device = kwargs.get("device")
    if isinstance(device, torch.device) and device.index is not None:
        return device.index
    return DEVICES.current


class _Output:
    """A new result: its layout, and the bytes it takes."""

    __slots__ = ("dtype", "nbytes", "shape", "strides")

    def __init__(self, meta: torch.Tensor) -> None:
        self.shape = tuple(meta.shape)
        self.strides = tuple(meta.stride())
        self.dtype = meta.dtype
        self.nbytes = _extent(self.shape, self.strides) * meta.dtype.itemsize

    def make(self, state: DeviceState) -> RemoteTensor:
        return RemoteTensor(
            allocate(state, self.nbytes), state.index, self.shape, self.strides, 0, self.dtype
        )


# How a plan's results are put together: a function of (args, kwargs, new outputs).
Build = Callable[[Sequence[Any], dict[str, Any], list[RemoteTensor]], Any]


class Plan:
    """What an operation of one signature does: its new outputs, its batch entry's head (None:
    nothing to send), and how its results are assembled."""

    __slots__ = ("build", "format", "head", "index", "outputs")

    def __init__(
        self, index: int, outputs: list[_Output], head: bytes | None, count: int, build: Build
    ) -> None:
        self.index = index
        self.outputs = outputs
        self.head = head
        self.format = f"<{count}Q"
        self.build = build

    def run(self, args: Sequence[Any], kwargs: dict[str, Any], tensors: list[RemoteTensor]) -> Any:
        state = DEVICES.state(self.index)
        outs = [output.make(state) for output in self.outputs]
        if self.head is not None:
            if state.seeded != DEVICES.seed_generation:
                _queue_seed(state)
            pointers = [tensor._ptr for tensor in tensors]
            pointers += [out._ptr for out in outs]
            state.session.submit_entry(self.head + struct.pack(self.format, *pointers))
        return self.build(args, kwargs, outs)


_PLANS: dict[Any, Plan | None] = {}  # None: the signature's operations run on the host


def dispatch(func: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
    """Carry out ``func(*args, **kwargs)``, an ATen operation on pool tensors."""
    special = _SPECIAL.get(func)
    if special is not None:
        return special(func, args, kwargs)
    return _planned(func, args, kwargs)


def _planned(func: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
    """The operation by its signature's plan (made now if new)."""
    tensors: list[RemoteTensor] = []
    key = _key(func, args, kwargs, tensors)
    try:
        plan = _PLANS[key]
    except KeyError:
        plan = _plan(func, args, kwargs, tensors)
        if len(_PLANS) >= MAX_PLANS:
            _PLANS.pop(next(iter(_PLANS)))
        _PLANS[key] = plan
    if plan is None:
        return on_host(func, args, kwargs)
    return plan.run(args, kwargs, tensors)


def _plan(
    func: Any, args: Sequence[Any], kwargs: dict[str, Any], tensors: list[RemoteTensor]
) -> Plan | None:
    """The plan of a new signature, from a run on meta tensors (None: run it on the host)."""
    index = _ordinal(tensors, kwargs)
    meta_args = _pytree.tree_map(_meta, list(args))
    meta_kwargs = _pytree.tree_map(_meta, dict(kwargs))
    try:
        results = func(*meta_args, **meta_kwargs)
    except NotImplementedError:  # no meta kernel, or a data-dependent shape
        return None
    except RuntimeError as exc:
        if "meta tensors" in str(exc):  # a value PyTorch needs now (item, is_nonzero)
            return None
        raise
    schema = func._schema
    returns = schema.returns
    results_list = [results] if len(returns) == 1 else list(results or ())
    outputs: list[_Output] = []
    parts: list[Callable[[Sequence[Any], dict[str, Any], list[RemoteTensor]], Any]] = []
    writes = any(arg.alias_info is not None and arg.alias_info.is_write for arg in schema.arguments)
    for ret, result in zip(returns, results_list, strict=True):
        if ret.alias_info is not None:
            position = _aliased_argument(schema, ret.alias_info)
            if ret.alias_info.is_write:
                argument = _argument(args, kwargs, position)
                if isinstance(argument, torch.Tensor) and argument.shape != result.shape:
                    raise NotImplementedError(
                        f"gpupool.torch: {func} would resize its {argument.shape} output to"
                        f" {result.shape}; give an output of the result's size"
                    )
                parts.append(_argument_getter(position))
            else:
                parts.append(_view_builder(position, result))
        elif isinstance(result, torch.Tensor):
            parts.append(_new_getter(len(outputs)))
            outputs.append(_Output(result))
        elif isinstance(result, (list, tuple)) and all(
            isinstance(item, torch.Tensor) for item in result
        ):
            first = len(outputs)
            outputs += [_Output(item) for item in result]
            parts.append(_new_list_getter(first, len(result)))
        elif result is None:  # an output not asked for (convolution_backward's mask)
            parts.append(_none)
        else:
            return None  # a number, or something else PyTorch wants now
    sends = func not in _ALLOCATING and (outputs or writes)
    head = None
    if sends:
        if func._opname not in ATEN:
            return None
        config = pb.TorchOpConfig(
            op=func.__name__,
            args=[_value(arg) for arg in args],
            kwargs=[pb.TorchKeyword(name=k, value=_value(v)) for k, v in kwargs.items()],
            out=[
                pb.TorchTensor(shape=o.shape, strides=o.strides, dtype=_dtype_name(o.dtype))
                for o in outputs
            ],
        ).SerializeToString()
        count = len(tensors) + len(outputs)
        head = batch.torch_op_entry_head(config, 8 * count)
    else:
        count = 0
    return Plan(index, outputs, head, count, _assemble(parts, len(returns)))


def _assemble(parts: list[Build], returns: int) -> Build:
    if returns == 0:
        return lambda args, kwargs, outs: None
    if returns == 1:
        return parts[0]
    return lambda args, kwargs, outs: tuple(part(args, kwargs, outs) for part in parts)


def _aliased_argument(schema: Any, alias: Any) -> tuple[int, str]:
    """The argument (position, name) a result aliases (the same alias set in the schema)."""
    for position, argument in enumerate(schema.arguments):
        info = argument.alias_info
        if info is not None and info.before_set & alias.before_set:
            return position, argument.name
    raise NotImplementedError(f"{schema.name}: a result aliases no argument")


def _argument(args: Sequence[Any], kwargs: dict[str, Any], position: tuple[int, str]) -> Any:
    index, name = position
    return args[index] if index < len(args) else kwargs[name]


def _argument_getter(position: tuple[int, str]) -> Build:
    return lambda args, kwargs, outs: _argument(args, kwargs, position)


def _none(args: Sequence[Any], kwargs: dict[str, Any], outs: list[RemoteTensor]) -> None:
    return None


def _new_getter(index: int) -> Build:
    return lambda args, kwargs, outs: outs[index]


def _new_list_getter(first: int, count: int) -> Build:
    return lambda args, kwargs, outs: outs[first : first + count]


def _view_builder(position: tuple[int, str], result: Any) -> Build:
    """A view result: wrappers over the aliased argument's memory, laid out as on meta."""
    single = isinstance(result, torch.Tensor)
    layouts = [
        (tuple(m.shape), tuple(m.stride()), m.storage_offset(), m.dtype)
        for m in ([result] if single else result)
    ]

    def build(args: Sequence[Any], kwargs: dict[str, Any], outs: list[RemoteTensor]) -> Any:
        base = _argument(args, kwargs, position)
        views = [RemoteTensor(base._mem, base._index, *layout) for layout in layouts]
        return views[0] if single else views

    return build


def _queue_seed(state: DeviceState) -> None:
    config = pb.TorchOpConfig(op="manual_seed", args=[pb.TorchValue(integer=DEVICES.seed)])
    head = batch.torch_op_entry_head(config.SerializeToString(), 0)
    state.session.submit_entry(head)
    state.seeded = DEVICES.seed_generation


# Copies between the host and the device.


def to_host(tensor: RemoteTensor) -> torch.Tensor:
    """A host copy of a device tensor (waits for the queued work and the data)."""
    if not tensor.is_contiguous():
        tensor = dispatch(aten.clone.default, (tensor,), {"memory_format": torch.contiguous_format})
    host = torch.empty(tensor.shape, dtype=tensor.dtype)
    nbytes = host.numel() * host.element_size()
    if nbytes:
        buffer = (ctypes.c_char * nbytes).from_address(host.data_ptr())
        read(DEVICES.state(tensor._index), tensor._ptr, memoryview(buffer).cast("B"))
    return host


def from_host(host: torch.Tensor, index: int) -> RemoteTensor:
    """A device copy of a host tensor (queued; its bytes are taken now)."""
    host = host.contiguous()
    output = _Output(host)
    tensor = output.make(DEVICES.state(index))
    _write(tensor, host)
    return tensor


def _write(tensor: RemoteTensor, host: torch.Tensor) -> None:
    """Write a contiguous host tensor's bytes into a contiguous device tensor."""
    nbytes = host.numel() * host.element_size()
    if nbytes:
        buffer = (ctypes.c_char * nbytes).from_address(host.data_ptr())
        write(DEVICES.state(tensor._index), tensor._ptr, memoryview(buffer).cast("B"))


def _copy_(func: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
    dst, src = args[0], args[1]
    dst_remote, src_remote = isinstance(dst, RemoteTensor), isinstance(src, RemoteTensor)
    if dst_remote and src_remote and dst._index == src._index:
        return _planned(func, args, kwargs)
    if src_remote:
        src = to_host(src)
    if not dst_remote:
        return dst.copy_(src)
    staged = torch.empty(dst.shape, dtype=dst.dtype)
    staged.copy_(src)
    if dst.is_contiguous():
        _write(dst, staged)
    else:
        _planned(func, (dst, from_host(staged, dst._index)), {})
    return dst


def _to_copy(func: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
    source = args[0]
    device = kwargs.get("device")
    if device is None or (
        device.type == "gpupool" and (device.index is None or device.index == source._index)
    ):
        rest = {k: v for k, v in kwargs.items() if k != "device"}
        return _planned(func, args, rest)
    host = to_host(source)
    rest = {k: v for k, v in kwargs.items() if k not in ("device", "pin_memory")}
    host = func(host, **rest) if rest else host
    if device.type == "cpu":
        return host.pin_memory() if kwargs.get("pin_memory") else host
    if device.type == "gpupool":
        return from_host(host, device.index)
    return host.to(device)


def _local_scalar_dense(func: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
    return to_host(args[0]).item()


def on_host(func: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
    """Run an operation on the host: its device tensors copied there, results copied back."""
    HOST_OPS[func.__name__] += 1
    tensors: list[RemoteTensor] = []
    _key(func, args, kwargs, tensors)
    index = _ordinal(tensors, kwargs)
    copies: dict[int, torch.Tensor] = {}

    def host(value: Any) -> Any:
        if isinstance(value, RemoteTensor):
            if id(value) not in copies:
                copies[id(value)] = to_host(value)
            return copies[id(value)]
        if isinstance(value, torch.device) and value.type == "gpupool":
            return torch.device("cpu")
        return value

    results = func(*_pytree.tree_map(host, list(args)), **_pytree.tree_map(host, dict(kwargs)))
    originals = {id(copies[id(t)]): t for t in tensors}
    schema = func._schema
    for position, argument in enumerate(schema.arguments):
        if argument.alias_info is not None and argument.alias_info.is_write:
            for original in _flat_tensors(_argument(args, kwargs, (position, argument.name))):
                if isinstance(original, RemoteTensor):
                    _copy_(aten.copy_.default, (original, copies[id(original)]), {})

    def back(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            original = originals.get(id(value))
            return original if original is not None else from_host(value, index)
        return value

    return _pytree.tree_map(back, results)


def _flat_tensors(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _unsupported(func: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
    raise NotImplementedError(
        f"gpupool.torch: {func} changes a tensor's size or storage in place, which gpupool"
        " tensors do not support (see docs/torch.md)"
    )


_SPECIAL: dict[Any, Callable[[Any, Sequence[Any], dict[str, Any]], Any]] = {
    aten.copy_.default: _copy_,
    aten._to_copy.default: _to_copy,
    aten._local_scalar_dense.default: _local_scalar_dense,
    aten.set_.source_Tensor: _unsupported,
    aten.set_.source_Storage: _unsupported,
    aten.set_.source_Storage_storage_offset: _unsupported,
    aten.resize_.default: _unsupported,
    aten.as_strided_.default: _unsupported,
    aten.t_.default: _unsupported,
    aten.transpose_.default: _unsupported,
    aten.squeeze_.default: _unsupported,
    aten.squeeze_.dim: _unsupported,
    aten.unsqueeze_.default: _unsupported,
}


_FACTORIES = (
    "arange",
    "full",
    "zeros",
    "ones",
    "eye",
    "linspace",
    "scalar_tensor",
    "rand",
    "randn",
    "randint",
    "randperm",
)


def factories() -> list[Any]:
    """The factory overloads given their own PrivateUse1 kernel (:func:`fallback`): their
    composite kernels would make an empty tensor and resize it, which a pool tensor cannot
    do, where these make the result at its size in one operation."""
    found = []
    for name in _FACTORIES:
        packet = getattr(aten, name)  # a name of the list above
        for overload in packet.overloads():
            op = getattr(packet, overload)
            takes_tensors = any("Tensor" in str(arg.type) for arg in op._schema.arguments)
            if "out" not in overload and not takes_tensors:
                found.append(op)
    return found


def fallback(op: Any, *args: Any, **kwargs: Any) -> Any:
    """PrivateUse1's fallback: operations with no pool tensor among their arguments that
    make one (factories: ``torch.zeros(..., device="gpupool")``) come here."""
    return dispatch(op, args, kwargs)
