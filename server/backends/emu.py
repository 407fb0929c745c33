"""The CPU emulator: device memory in host memory, CUDA C kernels compiled by the host compiler.

CI and most laptops have no GPU; the emulator lets them run the daemon, the client and every
test of the kernel path. Work runs synchronously in the worker process, so streams and events
keep CUDA's ordering trivially. A device pointer is the host address of the emulated memory in
the worker: kernels then use it as is. Device-wide memory accounting spans the workers of one
device through a :class:`MemoryLedger` in shared memory, so ``memGetInfo`` in one session sees
what another session holds, and a killed session's memory is back as soon as its slot is
cleared.
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import os
import sys
import time
from collections.abc import Callable, Sequence
from types import ModuleType

import numpy as np

from gpupool.errors import CUDARuntimeError
from gpupool.proto.kernel_args import Signature
from gpupool.server.backends.base import Backend, DeviceInfo, Dim
from gpupool.server.backends.emu_kernels import Compile, EmuFunction, EmuModule
from gpupool.server.ledger import SharedTable
from gpupool.transport import memcopy, memfd

ALIGNMENT = 256  # cudaMalloc's alignment
SHAREABLE_MIN = 64 << 10  # from this size an allocation is a memfd a peer worker can map
_LITTLE_ENDIAN = sys.byteorder == "little"


class MemoryLedger:
    """Bytes held by each worker slot of one emulated device, against its capacity: a
    :class:`~gpupool.server.ledger.SharedTable` that every worker of the device maps."""

    def __init__(self, table: SharedTable, total: int) -> None:
        self.total = total
        self._table = table

    @classmethod
    def create(cls, total: int, slots: int) -> MemoryLedger:
        return cls(SharedTable.create(slots), total)

    @classmethod
    def attach(cls, inherited_fd: int, total: int) -> MemoryLedger:
        """The ledger whose descriptor this worker inherited, opened anew."""
        return cls(SharedTable.attach(inherited_fd), total)

    def fileno(self) -> int:
        return self._table.fileno()

    def used(self) -> int:
        with self._table.locked() as slots:
            return sum(slots)

    def reserve(self, slot: int, size: int) -> None:
        """Count ``size`` more bytes for ``slot``; cudaErrorMemoryAllocation when they don't fit."""
        with self._table.locked() as slots:
            free = self.total - sum(slots)
            if size > free:
                raise CUDARuntimeError(
                    "cudaErrorMemoryAllocation",
                    f"out of memory allocating {size} bytes ({free} free of {self.total})",
                )
            slots[slot] += size

    def release(self, slot: int, size: int) -> None:
        with self._table.locked() as slots:
            slots[slot] -= size

    def clear(self, slot: int) -> None:
        """Forget everything ``slot`` held: its worker has ended."""
        self._table.clear(slot)

    def close(self) -> None:
        self._table.close()


class _Event:
    __slots__ = ("timing", "when")

    def __init__(self, timing: bool) -> None:
        self.timing = timing
        self.when: float | None = None


class EmuBackend(Backend):
    """One emulated device, for the session of one worker."""

    def __init__(
        self, index: int, ledger: MemoryLedger, slot: int, compile: Compile | None = None
    ) -> None:
        self._index = index
        self._ledger = ledger
        self._slot = slot
        self._compile = compile  # a confined worker's compile service; None: compile here
        self._buffers: dict[int, np.ndarray] = {}
        self._shared: dict[int, tuple[mmap.mmap, int, int]] = {}  # base -> map, memfd, size
        self._opened: dict[int, mmap.mmap] = {}  # other workers' memory mapped here

    def properties(self) -> DeviceInfo:
        return emulated_device(self._index, self._ledger.total)

    def mem_info(self) -> tuple[int, int]:
        return self._ledger.total - self._ledger.used(), self._ledger.total

    def malloc(self, size: int) -> int:
        self._ledger.reserve(self._slot, size)
        try:
            if size >= SHAREABLE_MIN:  # shared memory, which a peer worker can map
                fd = memfd.create(f"gpupool-emu-{os.getpid()}", size)
                try:
                    mapping = mmap.mmap(fd, size)
                except BaseException:
                    os.close(fd)
                    raise
                ptr = ctypes.addressof(ctypes.c_char.from_buffer(mapping))
                self._shared[ptr] = (mapping, fd, size)
                return ptr
            buffer = np.empty(size + ALIGNMENT, np.uint8)
        except (MemoryError, OSError) as exc:
            self._ledger.release(self._slot, size)
            raise CUDARuntimeError("cudaErrorMemoryAllocation", str(exc)) from exc
        ptr = -buffer.ctypes.data % ALIGNMENT + buffer.ctypes.data
        self._buffers[ptr] = buffer
        return ptr

    def free(self, ptr: int) -> None:
        shared = self._shared.pop(ptr, None)
        if shared is not None:
            mapping, fd, size = shared
            mapping.close()
            os.close(fd)
            self._ledger.release(self._slot, size)
            return
        buffer = self._buffers.pop(ptr)
        self._ledger.release(self._slot, buffer.size - ALIGNMENT)

    def export_memory(self, base: int, size: int) -> tuple[bytes, int | None] | None:
        shared = self._shared.get(base)
        return None if shared is None else (b"", shared[1])

    def open_peer_memory(self, handle: bytes, fd: int | None, size: int) -> int:
        if fd is None:
            raise CUDARuntimeError("cudaErrorInvalidValue", "no memory came with the region")
        try:
            if memfd.check(fd) < size:
                raise ValueError("the file is smaller than the region")
            mapping = mmap.mmap(fd, size)
        except (ValueError, OSError) as exc:
            raise CUDARuntimeError("cudaErrorInvalidValue", f"peer memory refused: {exc}") from exc
        finally:
            os.close(fd)
        ptr = ctypes.addressof(ctypes.c_char.from_buffer(mapping))
        self._opened[ptr] = mapping
        return ptr

    def close_peer_memory(self, ptr: int) -> None:
        mapping = self._opened.pop(ptr, None)
        if mapping is not None:
            mapping.close()

    def write(self, ptr: int, data: memoryview, stream: object) -> None:
        memcopy.copy(memoryview(_at(ptr, len(data))).cast("B"), data)

    def read(self, ptr: int, size: int, stream: object) -> memoryview:
        return memoryview(_at(ptr, size)).cast("B")

    def host_view(self, ptr: int, size: int) -> memoryview | None:
        return memoryview(_at(ptr, size)).cast("B")

    def copy(self, dst: int, src: int, size: int, stream: object) -> None:
        ctypes.memmove(dst, src, size)

    def memset(self, ptr: int, value: int, size: int, stream: object) -> None:
        ctypes.memset(ptr, value, size)

    def load_module(self, kind: str, image: str | bytes, options: Sequence[str]) -> object:
        if kind != "cuda_source":
            raise CUDARuntimeError(
                "cudaErrorNotSupported",
                f"the emulator cannot load {kind.upper()}: send CUDA C source, or use a GPU daemon",
            )
        assert isinstance(image, str)
        return EmuModule.from_source(image, options, self._compile)

    def get_function(self, module: object, name: str) -> object:
        assert isinstance(module, EmuModule)
        return module.get_function(name)

    def launch(
        self,
        function: object,
        grid: Dim,
        block: Dim,
        shared_mem: int,
        stream: object,
        args: Sequence[np.generic],
    ) -> None:
        assert isinstance(function, EmuFunction)
        function.launch(grid, block, shared_mem, [arg.tobytes() for arg in args])

    def prepare_launch(
        self,
        function: object,
        grid: Dim,
        block: Dim,
        shared_mem: int,
        stream: object,
        signature: Signature,
    ) -> Callable[[bytes], None]:
        if not _LITTLE_ENDIAN:  # kernels here read the host's byte order, not the wire's
            return super().prepare_launch(function, grid, block, shared_mem, stream, signature)
        assert isinstance(function, EmuFunction)
        return function.prepare(grid, block, shared_mem, signature.sizes)

    def create_stream(self) -> object:
        return object()

    def destroy_stream(self, stream: object) -> None:
        pass  # work runs synchronously: a stream holds nothing

    def synchronize_stream(self, stream: object) -> None:
        pass

    def stream_wait_event(self, stream: object, event: object) -> None:
        pass

    def create_event(self, disable_timing: bool) -> object:
        return _Event(timing=not disable_timing)

    def record_event(self, event: object, stream: object) -> None:
        assert isinstance(event, _Event)
        event.when = time.perf_counter()

    def query_event(self, event: object) -> bool:
        return True

    def synchronize_event(self, event: object) -> None:
        pass

    def elapsed_ms(self, start: object, end: object) -> float:
        assert isinstance(start, _Event) and isinstance(end, _Event)
        if not (start.timing and end.timing):
            raise CUDARuntimeError(
                "cudaErrorInvalidResourceHandle", "elapsed time of an event created without timing"
            )
        if start.when is None or end.when is None:
            raise CUDARuntimeError("cudaErrorInvalidResourceHandle", "event was never recorded")
        return (end.when - start.when) * 1e3

    def synchronize(self) -> None:
        pass

    def array_module(self) -> ModuleType:
        return np

    def view(
        self,
        base: int,
        size: int,
        offset: int,
        shape: tuple[int, ...],
        strides: tuple[int, ...],
        dtype: np.dtype,
    ) -> np.ndarray:
        memory = memoryview(_at(base, size))
        return np.ndarray(shape, dtype, buffer=memory, offset=offset, strides=strides)

    def on_stream(self, stream: object) -> contextlib.nullcontext[None]:
        return contextlib.nullcontext()  # work runs synchronously, in order

    def random_generator(self, seed: int | None) -> np.random.Generator:
        return np.random.default_rng(seed)

    def random_state(self, seed: int | None) -> np.random.RandomState:
        # MT19937 seeds through a SeedSequence: any non-negative integer, as CuPy takes
        return np.random.RandomState(np.random.MT19937(seed))


def emulated_device(index: int, total_memory: int) -> DeviceInfo:
    """The properties an emulated device reports: a Hopper-class device backed by the host."""
    return DeviceInfo(
        name="gpupool CPU emulator",
        total_memory=total_memory,
        major=9,
        minor=0,
        multiprocessor_count=os.cpu_count() or 1,
        pci_bus_id=f"emu:{index}",
    )


def _at(ptr: int, size: int) -> ctypes.Array[ctypes.c_char]:
    return (ctypes.c_char * size).from_address(ptr)
