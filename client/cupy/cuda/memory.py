"""Device memory as CuPy hands it out: ``MemoryPointer``, the allocator and the memory pool.

``alloc`` goes through the current allocator, by default the process's ``MemoryPool``. As in
CuPy, the pool rounds blocks up to 512 bytes and keeps freed blocks (per device, size and
stream) to hand out again, so a loop that allocates and frees arrays of the same sizes makes
no call to the daemon at all after its first round. When the daemon answers a malloc with
``cudaErrorMemoryAllocation`` the pool frees its cached blocks and tries once more before
raising CuPy's ``OutOfMemoryError``. Memory goes back (to the pool, or to the daemon with a
queued free) when the last pointer to it is collected.
"""

from __future__ import annotations

import contextlib
import gc
import threading
import weakref
from collections.abc import Callable
from typing import Any

from gpupool.client import context, runtime
from gpupool.cupy.cuda._bins import AllocatorChoice, BlockPool, round_size
from gpupool.cupy.cuda.device import Device, release_at_collection
from gpupool.cupy.cuda.stream import Stream, get_current_stream
from gpupool.errors import CUDARuntimeError

Allocator = Callable[[int], "MemoryPointer"]


class OutOfMemoryError(MemoryError):
    """A device (or the pool's limit) has no room for an allocation: CuPy's exception."""

    def __init__(self, size: int, total: int, limit: int = 0) -> None:
        detail = f"allocated so far: {total:,} bytes"
        if limit:
            detail += f", limit set to: {limit:,} bytes"
        super().__init__(f"Out of memory allocating {size:,} bytes ({detail}).")


class Memory:
    """One device allocation on the current device, freed (a queued call) when collected."""

    def __init__(self, size: int) -> None:
        self.device_id: int = runtime.getDevice()
        self.size: int = size
        self.ptr: int = runtime.malloc(size) if size else 0
        if self.ptr:
            release_at_collection(self, self.device_id, runtime.free, self.ptr)

    def __int__(self) -> int:
        return self.ptr


class UnownedMemory:
    """Device memory another object owns (one exposing ``__cuda_array_interface__``): used,
    never freed here; ``owner`` is kept alive as long as the pointer is."""

    def __init__(self, ptr: int, size: int, owner: Any, device_id: int = -1) -> None:
        self.device_id: int = runtime.getDevice() if device_id < 0 else device_id
        self.size: int = size
        self.ptr: int = ptr
        self._owner = owner

    def __int__(self) -> int:
        return self.ptr


class PooledMemory:
    """A block lent by a pool: handed back to the pool, not freed, when collected."""

    def __init__(self, block: MemoryPointer, pool: SingleDeviceMemoryPool, stream: int) -> None:
        self.device_id: int = block.device_id
        self.size: int = block.mem.size
        self.ptr: int = block.ptr
        finalizer = weakref.finalize(self, pool._give_back, stream, self.size, block)
        finalizer.atexit = False

    def __int__(self) -> int:
        return self.ptr


def _host_address(mem: Any) -> Any:
    """A host buffer as the runtime takes it: an address, or an object with the buffer protocol
    (a ctypes ``c_void_p`` gives its value, as CuPy accepts)."""
    value = getattr(mem, "value", None)
    return value if isinstance(value, int) else mem


def _stream_ptr(stream: Stream | None) -> int:
    return (get_current_stream() if stream is None else stream).ptr


class MemoryPointer:
    """A pointer into an allocation, keeping it alive, with CuPy's copy methods."""

    def __init__(self, mem: Memory | PooledMemory | UnownedMemory, offset: int) -> None:
        self.mem = mem
        self.ptr: int = mem.ptr + offset
        self.device_id: int = mem.device_id

    @property
    def device(self) -> Device:
        return Device(self.device_id)

    def __add__(self, offset: int) -> MemoryPointer:
        return MemoryPointer(self.mem, self.ptr - self.mem.ptr + offset)

    def __sub__(self, offset: int) -> MemoryPointer:
        return self + -offset

    def __int__(self) -> int:
        return self.ptr

    def copy_from_device(self, src: MemoryPointer, size: int) -> None:
        self.copy_from_device_async(src, size)

    def copy_from_device_async(
        self, src: MemoryPointer, size: int, stream: Stream | None = None
    ) -> None:
        if size > 0:
            with self.device:
                runtime.memcpyAsync(
                    self.ptr, src.ptr, size, runtime.memcpyDeviceToDevice, _stream_ptr(stream)
                )

    def copy_from_host(self, mem: Any, size: int) -> None:
        """Copy ``size`` bytes from host memory (an address or a buffer) in the current stream's
        order, and wait for it, as CuPy's (a null-stream copy is not ordered after the work of
        a non-blocking stream)."""
        if size > 0:
            with self.device:
                self.copy_from_host_async(mem, size)
                runtime.streamSynchronize(_stream_ptr(None))

    def copy_from_host_async(self, mem: Any, size: int, stream: Stream | None = None) -> None:
        """Copy ``size`` host bytes in stream order (the current stream by default)."""
        if size > 0:
            with self.device:
                runtime.memcpyAsync(
                    self.ptr,
                    _host_address(mem),
                    size,
                    runtime.memcpyHostToDevice,
                    _stream_ptr(stream),
                )

    def copy_to_host(self, mem: Any, size: int) -> None:
        """Copy to host memory in the current stream's order, as CuPy's (see copy_from_host)."""
        self.copy_to_host_async(mem, size)

    def copy_to_host_async(self, mem: Any, size: int, stream: Stream | None = None) -> None:
        """Copy ``size`` bytes to host memory after the stream's earlier work (the host buffer
        is filled when this returns: the data has to travel back)."""
        if size > 0:
            with self.device:
                runtime.memcpyAsync(
                    _host_address(mem),
                    self.ptr,
                    size,
                    runtime.memcpyDeviceToHost,
                    _stream_ptr(stream),
                )

    def memset(self, value: int, size: int) -> None:
        self.memset_async(value, size)

    def memset_async(self, value: int, size: int, stream: Stream | None = None) -> None:
        if size > 0:
            with self.device:
                runtime.memsetAsync(self.ptr, value, size, _stream_ptr(stream))


def _malloc(size: int) -> MemoryPointer:
    """A plain allocation of its own (``set_allocator(None)``)."""
    return MemoryPointer(Memory(size), 0)


def _nothing() -> None:
    """The first attempt makes no room."""


def _is_out_of_memory(error: CUDARuntimeError) -> bool:
    return error.name == "cudaErrorMemoryAllocation"


class SingleDeviceMemoryPool(BlockPool[MemoryPointer]):
    """The pool of one device: blocks rounded to 512 bytes, freed ones kept per size and stream."""

    def __init__(self, device_id: int, allocator: Allocator) -> None:
        super().__init__()
        self.device_id = device_id
        self._allocator = allocator
        self._limit = 0

    def malloc(self, size: int) -> MemoryPointer:
        if size == 0:
            return MemoryPointer(Memory(0), 0)
        rounded = round_size(size)
        stream = get_current_stream(self.device_id).ptr
        block = self._lend(stream, rounded, lambda: self._allocate(rounded))
        return MemoryPointer(PooledMemory(block, self, stream), 0)

    def _allocate(self, size: int) -> MemoryPointer:
        """A new block from the allocator. As CuPy: past the limit, or when the daemon has no
        room, free the cached blocks (then collect garbage too) and try again before raising
        OutOfMemoryError. The frees are queued calls that reach the daemon before the retry."""
        refused: CUDARuntimeError | None = None
        for make_room in (_nothing, self.free_all_blocks, self._collect_and_free):
            make_room()
            if self._limit and self.total_bytes() + size > self._limit:
                continue
            try:
                return self._allocator(size)
            except CUDARuntimeError as error:
                if not _is_out_of_memory(error):
                    raise
                refused = error
        raise OutOfMemoryError(size, self.total_bytes(), self._limit) from refused

    def _collect_and_free(self) -> None:
        """Collect garbage (arrays in reference cycles hold blocks), then free the cache."""
        gc.collect()
        self.free_all_blocks()

    def free_all_blocks(self, stream: Stream | None = None) -> None:
        self._forget_free(None if stream is None else stream.ptr)

    def set_limit(self, size: int | None = None, fraction: float | None = None) -> None:
        if size is not None and fraction is not None:
            raise ValueError("size and fraction cannot be specified at one time")
        if fraction is not None:
            if not 0 <= fraction <= 1:
                raise ValueError(f"memory limit fraction out of range: {fraction}")
            size = int(Device(self.device_id).mem_info[1] * fraction)
        if size is not None and size < 0:
            raise ValueError(f"memory limit size out of range: {size}")
        self._limit = size or 0

    def get_limit(self) -> int:
        return self._limit


class MemoryPool:
    """CuPy's ``MemoryPool``: one pool per device; its methods act on the current device's.

    The pools belong to one connection: after ``gpupool.connect`` names other daemons, the
    blocks of the old sessions (freed with them) are forgotten.
    """

    def __init__(self, allocator: Allocator | None = None) -> None:
        self._allocator = _malloc if allocator is None else allocator
        self._pools: dict[int, SingleDeviceMemoryPool] = {}
        self._context: context.Context | None = None
        self._lock = threading.Lock()

    def _pool(self) -> SingleDeviceMemoryPool:
        current = context.current()
        device = current.current_device
        with self._lock:
            if self._context is not current:
                self._pools, self._context = {}, current
            pool = self._pools.get(device)
            if pool is None:
                pool = self._pools[device] = SingleDeviceMemoryPool(device, self._allocator)
            return pool

    def malloc(self, size: int) -> MemoryPointer:
        """A block of at least ``size`` bytes on the current device, reused when one is free."""
        return self._pool().malloc(size)

    def free_all_blocks(self, stream: Stream | None = None) -> None:
        """Free the cached blocks (of ``stream`` only, when given) of the current device."""
        self._pool().free_all_blocks(stream)

    def n_free_blocks(self) -> int:
        return self._pool().n_free_blocks()

    def used_bytes(self) -> int:
        return self._pool().used_bytes()

    def free_bytes(self) -> int:
        return self._pool().free_bytes()

    def total_bytes(self) -> int:
        return self._pool().total_bytes()

    def set_limit(self, size: int | None = None, fraction: float | None = None) -> None:
        """Cap what this pool holds on the current device (bytes, or a fraction of its memory)."""
        self._pool().set_limit(size, fraction)

    def get_limit(self) -> int:
        return self._pool().get_limit()


_choice: AllocatorChoice[MemoryPool, MemoryPointer] = AllocatorChoice(MemoryPool, _malloc)


def get_default_memory_pool() -> MemoryPool:
    """The process's device memory pool, behind ``alloc`` unless ``set_allocator`` changed it."""
    return _choice.default_pool()


def set_allocator(allocator: Allocator | None = None) -> None:
    """Allocate with ``allocator`` (``size -> MemoryPointer``, e.g. a pool's ``malloc``);
    ``None`` allocates each array on its own, with no pool."""
    _choice.set(allocator)


def get_allocator() -> Allocator:
    return _choice.get()


def using_allocator(allocator: Allocator | None = None) -> contextlib.AbstractContextManager[None]:
    """Allocate with ``allocator`` inside a ``with`` block (None: no pool), as CuPy's."""
    return _choice.using(allocator)


def alloc(size: int) -> MemoryPointer:
    """``size`` bytes on the current device from the current allocator."""
    return _choice.get()(size)
