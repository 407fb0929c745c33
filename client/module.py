"""Modules and kernels on remote devices, in the shape of CuPy's ``RawModule``/``RawKernel``.

A module is loaded on the device that is current when it is made, so that a source that does
not compile raises :class:`~gpupool.errors.CompileError` (with the compiler's log) right
there; it is loaded again, on first use, on any other device that launches its kernels.
Launches are asynchronous: they are queued and travel with the next synchronizing call.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from gpupool.client import context
from gpupool.client.launches import Dims, LaunchEncoder
from gpupool.client.session import new_handle
from gpupool.proto import gpupool_pb2 as pb


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
        self._encoders: dict[int, LaunchEncoder] = {}  # device ordinal -> its launches
        self._lock = threading.Lock()

    def handle_on(self, device: int) -> int:
        return self._encoder_on(device).function

    def _encoder_on(self, device: int) -> LaunchEncoder:
        with self._lock:
            if device not in self._encoders:
                request = pb.GetFunction(
                    module=self.module.handle_on(device), name=self.name, function=new_handle()
                )
                context.current().session(device).call(pb.Request(get_function=request))
                self._encoders[device] = LaunchEncoder(request.function)
            return self._encoders[device]

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
        encoder = self._encoders.get(device) or self._encoder_on(device)
        ctx.session(device).submit_entry(encoder.entry(grid, block, args, shared_mem, stream))
