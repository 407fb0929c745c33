"""Modules and kernels on remote devices, in the shape of CuPy's ``RawModule``/``RawKernel``.

A module is loaded on the device that is current when it is made, so that a source that does
not compile raises :class:`~gpupool.errors.CompileError` (with the compiler's log) right
there; it is loaded again, on first use, on any other device that launches its kernels.
Launches are asynchronous: they are queued and travel with the next synchronizing call.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from gpupool.client import context
from gpupool.client.session import new_handle
from gpupool.proto import gpupool_pb2 as pb
from gpupool.proto.kernel_args import POINTER
from gpupool.proto.scalars import wire_scalar

Dims = int | Sequence[int]
_POINTER = struct.Struct("<Q")


class Module:
    """CUDA C source, PTX or cubin, compiled and loaded on the daemon."""

    def __init__(self, kind: str, image: str | bytes, options: Sequence[str] = ()) -> None:
        self._load = pb.ModuleLoad(options=list(options))
        setattr(self._load, kind, image)
        self._handles: dict[int, int] = {}  # device ordinal -> module handle
        self._lock = threading.Lock()
        self.handle_on(context.current().current_device)

    @classmethod
    def from_source(cls, source: str, options: Sequence[str] = ()) -> Module:
        return cls("cuda_source", source, options)

    @classmethod
    def from_ptx(cls, ptx: str | bytes) -> Module:
        return cls("ptx", ptx.encode() if isinstance(ptx, str) else ptx)

    @classmethod
    def from_cubin(cls, cubin: bytes) -> Module:
        return cls("cubin", cubin)

    def handle_on(self, device: int) -> int:
        """This module's handle on ``device``, loading it there on first use."""
        with self._lock:
            if device not in self._handles:
                load = pb.ModuleLoad()
                load.CopyFrom(self._load)
                load.module = new_handle()
                context.current().session(device).call(pb.Request(module_load=load))
                self._handles[device] = load.module
            return self._handles[device]

    def get_function(self, name: str) -> Function:
        """The kernel ``name``; cudaErrorSymbolNotFound when the module has none of that name."""
        function = Function(self, name)
        function.handle_on(context.current().current_device)
        return function


class Function:
    """A kernel of a :class:`Module`; calling it queues a launch on the current device."""

    def __init__(self, module: Module, name: str) -> None:
        self.module = module
        self.name = name
        self._handles: dict[int, int] = {}
        self._lock = threading.Lock()

    def handle_on(self, device: int) -> int:
        with self._lock:
            if device not in self._handles:
                request = pb.GetFunction(
                    module=self.module.handle_on(device), name=self.name, function=new_handle()
                )
                context.current().session(device).call(pb.Request(get_function=request))
                self._handles[device] = request.function
            return self._handles[device]

    def __call__(
        self,
        grid: Dims,
        block: Dims,
        args: Sequence[Any],
        *,
        shared_mem: int = 0,
        stream: int = 0,
    ) -> None:
        """Launch as ``kernel(grid, block, args)`` in CuPy; returns without waiting."""
        ctx = context.current()
        device = ctx.current_device
        types, data = kernel_args(args)
        config = pb.LaunchConfig(
            function=self.handle_on(device),
            grid=_dim3(grid),
            block=_dim3(block),
            shared_mem=shared_mem,
            stream=stream,
            arg_types=types,
        )
        launch = pb.Launch(config=config.SerializeToString(), arg_data=data)
        ctx.session(device).submit(pb.Request(launch=launch))


def _dim3(dims: Dims) -> pb.Dim3:
    if type(dims) is tuple and len(dims) == 1:  # the common (n,) form, on every launch
        return pb.Dim3(x=dims[0], y=1, z=1)
    values = (dims,) if isinstance(dims, int) else tuple(dims)
    if not 1 <= len(values) <= 3:
        raise ValueError(f"a grid or block has 1 to 3 dimensions, not {len(values)}")
    x, y, z = (*values, 1, 1)[:3]
    return pb.Dim3(x=x, y=y, z=z)


def kernel_args(args: Sequence[Any]) -> tuple[bytes, bytes]:
    """A launch's ``arg_types`` and ``arg_data`` (``gpupool.proto.kernel_args``)."""
    types = bytearray()
    data = []
    for value in args:
        code, raw = kernel_arg(value)
        types.append(code)
        data.append(raw)
    return bytes(types), b"".join(data)


def kernel_arg(value: Any) -> tuple[int, bytes]:
    """The wire form of one kernel argument, its ``ScalarType`` and little-endian bytes,
    converted as CuPy converts it.

    Python ints travel as 64-bit integers (the size of a device pointer, so an address from
    ``malloc`` works as a pointer argument), floats as doubles, bools as bools; NumPy scalars
    keep their dtype. Objects exposing ``__cuda_array_interface__`` pass their device pointer.
    """
    if isinstance(value, np.generic):
        return wire_scalar(value)
    interface = getattr(value, "__cuda_array_interface__", None)
    if interface is not None:
        return POINTER, _POINTER.pack(interface["data"][0])
    if isinstance(value, np.ndarray):
        raise TypeError("a host array cannot be a kernel argument: copy it to the device first")
    if isinstance(value, bool):
        value = np.bool_(value)
    elif isinstance(value, int):
        value = np.int64(value)
    elif isinstance(value, float):
        value = np.float64(value)
    elif isinstance(value, complex):
        value = np.complex128(value)
    if not isinstance(value, np.generic):
        raise TypeError(f"unsupported kernel argument type: {type(value).__name__}")
    return wire_scalar(value)
