"""What a backend does for one device inside one worker process.

A backend is the only place that touches the device. The session executor checks every
request (handles, pointer ranges) before it calls a backend, so a backend may trust its
arguments; it raises :class:`~gpupool.errors.CUDARuntimeError` with CUDA's error name when
the device refuses.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from types import ModuleType
from typing import Any

import numpy as np

from gpupool.errors import CUDARuntimeError
from gpupool.proto import gpupool_pb2 as pb
from gpupool.proto.kernel_args import Signature
from gpupool.transport import memcopy

Dim = tuple[int, int, int]
MAX_GRID = (2**31 - 1, 65535, 65535)
MAX_BLOCK = (1024, 1024, 64)


@dataclass(frozen=True)
class DeviceInfo:
    """The properties a client sees for a device (the wire's ``DeviceProperties``)."""

    name: str
    total_memory: int
    major: int
    minor: int
    multiprocessor_count: int
    max_threads_per_block: int = 1024
    warp_size: int = 32
    shared_memory_per_block: int = 48 * 1024
    clock_rate_khz: int = 0
    pci_bus_id: str = ""
    uuid: str = ""

    def to_message(self) -> pb.DeviceProperties:
        return pb.DeviceProperties(**asdict(self))


def check_launch(
    grid: Sequence[int],
    block: Sequence[int],
    shared_mem: int,
    max_threads: int = 1024,
    max_shared: int = 48 * 1024,
) -> None:
    """Refuse a launch configuration CUDA refuses, naming the limit it breaks.

    Checked before the backend sees the launch, so that both backends give the same error
    (CUDA's launch would otherwise report some of these as cudaErrorInvalidValue).
    """
    problem = None
    for axis, g, b, g_max, b_max in zip("xyz", grid, block, MAX_GRID, MAX_BLOCK, strict=True):
        if not 1 <= g <= g_max:
            problem = f"grid.{axis} = {g} is outside 1..{g_max}"
        elif not 1 <= b <= b_max:
            problem = f"block.{axis} = {b} is outside 1..{b_max}"
        if problem:
            break
    else:
        threads = math.prod(block)
        if threads > max_threads:
            problem = f"block {tuple(block)} has {threads} threads, more than {max_threads}"
        elif not 0 <= shared_mem <= max_shared:
            problem = (
                f"{shared_mem} bytes of dynamic shared memory requested, outside 0..{max_shared}"
            )
    if problem:
        raise CUDARuntimeError("cudaErrorInvalidConfiguration", problem)


class Backend(ABC):
    """One device of the daemon, driven from the worker process that owns a session.

    Streams, events, modules and functions are opaque objects of the backend's own; ``None``
    stands for the null stream.
    """

    @abstractmethod
    def properties(self) -> DeviceInfo: ...

    @abstractmethod
    def mem_info(self) -> tuple[int, int]:
        """(free, total) bytes of the device, as cudaMemGetInfo."""

    @abstractmethod
    def malloc(self, size: int) -> int: ...

    def own_memory(self) -> int:
        """Device bytes the backend holds on its own (a memory pool for array operations)."""
        return 0

    def limit_own_memory(self, limit: int) -> None:
        """Bound :meth:`own_memory` by ``limit`` bytes: the rest of a session's quota."""
        return  # a backend without memory of its own has nothing to bound

    def context_memory(self) -> int:
        """Device bytes this process takes beyond its allocations (a CUDA context).

        They come out of a session's share of the device: two half-GPU tenants each see
        half of its memory less their own context, so both fit on the device at once.
        """
        return 0

    @abstractmethod
    def free(self, ptr: int) -> None: ...

    @abstractmethod
    def write(self, ptr: int, data: memoryview, stream: object) -> None:
        """Copy host bytes to the device at ``ptr``."""

    @abstractmethod
    def read(self, ptr: int, size: int, stream: object) -> memoryview:
        """Copy ``size`` bytes at ``ptr`` to the host; the view is read before the next call."""

    def read_into(self, ptr: int, target: memoryview, stream: object) -> None:
        """Copy ``len(target)`` bytes at ``ptr`` into a host buffer."""
        memcopy.copy(target, self.read(ptr, len(target), stream))

    def host_view(self, ptr: int, size: int) -> memoryview | None:
        """Device memory the host can write directly (the emulator's), else None."""
        return None

    def staging(self, size: int) -> memoryview:
        """A host buffer that device copies read from and write to at full speed."""
        return memoryview(bytearray(size))

    def register_host(self, buffer: memoryview) -> None:
        """Make a long-lived host buffer (a shared-memory ring) fast to copy from and to."""
        return None

    def unregister_host(self, buffer: memoryview) -> None:
        """Undo :meth:`register_host` before the buffer goes away."""
        return None

    @abstractmethod
    def copy(self, dst: int, src: int, size: int, stream: object) -> None: ...

    # Another worker of this daemon copying straight from this one's memory (peer copies)

    def export_memory(self, base: int, size: int) -> tuple[bytes, int | None] | None:
        """What another worker of this host needs to open the allocation at ``base``: a CUDA
        IPC handle, or the descriptor of the emulator's shared memory; None if it cannot."""
        return None

    def open_peer_memory(self, handle: bytes, fd: int | None, size: int) -> int:
        """Map another worker's exported allocation of ``size`` bytes; its address here."""
        raise CUDARuntimeError("cudaErrorNotSupported", "this backend opens no peer memory")

    def close_peer_memory(self, ptr: int) -> None:
        """Undo :meth:`open_peer_memory`."""
        return None

    @abstractmethod
    def memset(self, ptr: int, value: int, size: int, stream: object) -> None: ...

    @abstractmethod
    def load_module(self, kind: str, image: str | bytes, options: Sequence[str]) -> object:
        """Load a module; ``kind`` is ``cuda_source``, ``ptx`` or ``cubin``."""

    @abstractmethod
    def get_function(self, module: object, name: str) -> object: ...

    @abstractmethod
    def launch(
        self,
        function: object,
        grid: Dim,
        block: Dim,
        shared_mem: int,
        stream: object,
        args: Sequence[np.generic],
    ) -> None:
        """Launch ``function``; device pointers arrive as ``np.uint64`` scalars."""

    def prepare_launch(
        self,
        function: object,
        grid: Dim,
        block: Dim,
        shared_mem: int,
        stream: object,
        signature: Signature,
    ) -> Callable[[bytes], None]:
        """A launch of ``function`` in this configuration, made by calling the result with
        each launch's argument bytes (``signature.size`` of them, as the wire has them).

        The caller has checked the configuration and the bytes' length, and calls the
        result from one thread. By default each call converts the bytes to NumPy scalars
        for :meth:`launch`; a backend that can use the bytes as they are does better.
        """

        def launch(data: bytes) -> None:
            self.launch(function, grid, block, shared_mem, stream, signature.values(data))

        return launch

    @abstractmethod
    def create_stream(self) -> object: ...

    @abstractmethod
    def destroy_stream(self, stream: object) -> None: ...

    @abstractmethod
    def synchronize_stream(self, stream: object) -> None: ...

    @abstractmethod
    def stream_wait_event(self, stream: object, event: object) -> None: ...

    @abstractmethod
    def create_event(self, disable_timing: bool) -> object: ...

    @abstractmethod
    def record_event(self, event: object, stream: object) -> None: ...

    @abstractmethod
    def query_event(self, event: object) -> bool: ...

    @abstractmethod
    def synchronize_event(self, event: object) -> None: ...

    @abstractmethod
    def elapsed_ms(self, start: object, end: object) -> float: ...

    @abstractmethod
    def synchronize(self) -> None: ...

    # Arrays: the daemon's array functions (server/arrays.py) run on views of device memory.

    @abstractmethod
    def array_module(self) -> ModuleType:
        """The module whose functions array operations call: NumPy or CuPy (same names)."""

    @abstractmethod
    def view(
        self,
        base: int,
        size: int,
        offset: int,
        shape: tuple[int, ...],
        strides: tuple[int, ...],
        dtype: np.dtype,
    ) -> Any:
        """An array of the array module over the ``size`` device bytes at ``base``.

        Element [0, ..., 0] is ``offset`` bytes in; every element lies inside the bytes (the
        caller has checked them against the session's allocations).
        """

    @abstractmethod
    def on_stream(self, stream: object) -> AbstractContextManager[object]:
        """A context in which the array module's work goes to ``stream``."""

    @abstractmethod
    def random_generator(self, seed: int | None) -> Any:
        """A ``Generator`` of the array module (``default_rng``), seeded likewise."""

    @abstractmethod
    def random_state(self, seed: int | None) -> Any:
        """A ``RandomState`` of the array module, seeded with any integer in [0, 2**64)."""
