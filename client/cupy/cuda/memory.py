"""Device memory as CuPy hands it out: ``MemoryPointer``, the allocator and the memory pool.

``alloc`` goes through the current allocator, by default the process's ``MemoryPool``. As in
CuPy, the pool rounds blocks up to 512 bytes and keeps freed blocks (per device, size and
stream) to hand out again, so a loop that allocates and frees arrays of the same sizes makes
no call to the daemon at all after its first round. A malloc is a round trip to the daemon
(it waits for everything queued before it), so the pool also carves new small blocks out of
arenas of ``ARENA_SIZE`` bytes it allocates ahead: a program that keeps a new small array
each step (a loss, say) makes a malloc call once an arena, not once a step. The daemon
checks every pointer against what was really allocated (the arenas) and counts them against
the session's quota. When the daemon answers a malloc with ``cudaErrorMemoryAllocation``
the pool asks for the block's own size instead of an arena, then frees its cached blocks
and tries once more before raising CuPy's ``OutOfMemoryError``. Memory goes back (to the
pool, or to the daemon with a queued free) when the last pointer to it is collected; an
arena, once none of its blocks is lent or cached.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Callable
from typing import Any

from gpupool.client import context, runtime
from gpupool.cupy.cuda._bins import AllocatorChoice, BlockPool, round_size
from gpupool.cupy.cuda.device import Device, release_at_collection
from gpupool.cupy.cuda.stream import Stream, get_current_stream
from gpupool.errors import CUDARuntimeError

Allocator = Callable[[int], "MemoryPointer"]
ARENA_SIZE = 2 << 20  # what the pool allocates at once for small blocks
MAX_CARVED = ARENA_SIZE // 4  # larger blocks get an allocation of their own


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


class Arena:
    """One device allocation of a pool, which its blocks are carved from (a block of
    ``MAX_CARVED`` bytes or more has one of its own). The blocks keep it alive; when the last
    goes, the allocation is freed (a queued call) and the pool stops counting it."""

    def __init__(self, pool: SingleDeviceMemoryPool, allocation: MemoryPointer, size: int) -> None:
        self.allocation = allocation
        self.device_id: int = allocation.device_id
        self.ptr: int = allocation.ptr
        self.size = size
        self.top = 0  # bytes carved so far
        self._pool = pool

    def carve(self, size: int) -> MemoryPointer | None:
        """The next ``size`` bytes, or None when the arena has not that many left."""
        if self.top + size > self.size:
            return None
        block = MemoryPointer(self, self.top)
        self.top += size
        return block

    def __del__(self) -> None:
        self._pool._released(self.size)

    def __int__(self) -> int:
        return self.ptr


class PooledMemory:
    """A block lent by a pool: handed back to the pool, not freed, when collected.

    ``__del__`` rather than a ``weakref.finalize``: an array of every operation holds one,
    and a finalizer costs more to make than the rest of the block."""

    __slots__ = ("_block", "_pool", "_stream", "device_id", "ptr", "size")

    def __init__(
        self, block: MemoryPointer, pool: SingleDeviceMemoryPool, stream: int, size: int
    ) -> None:
        self.device_id: int = block.device_id
        self.size: int = size
        self.ptr: int = block.ptr
        self._block = block
        self._pool = pool
        self._stream = stream

    def __del__(self) -> None:
        self._pool._give_back(self._stream, self.size, self._block)

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

    __slots__ = ("device_id", "mem", "ptr")

    def __init__(self, mem: Memory | PooledMemory | Arena | UnownedMemory, offset: int) -> None:
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
    """The pool of one device: blocks rounded to 512 bytes, freed ones kept per size and stream,
    new small ones carved from arenas (per stream, as the blocks are kept)."""

    def __init__(self, device_id: int, allocator: Allocator) -> None:
        super().__init__()
        self.device_id = device_id
        self._allocator = allocator
        self._limit = 0
        self._arenas: dict[int, Arena] = {}  # stream -> the arena it carves from now
        self._held = 0  # bytes of the arenas alive

    def malloc(self, size: int) -> MemoryPointer:
        if size == 0:
            return MemoryPointer(Memory(0), 0)
        rounded = round_size(size)
        stream = get_current_stream(self.device_id).ptr
        block = self._lend(stream, rounded, lambda: self._allocate(stream, rounded))
        return MemoryPointer(PooledMemory(block, self, stream, rounded), 0)

    def total_bytes(self) -> int:
        """Bytes this pool holds on the device: its arenas (lent, cached or not yet carved)."""
        return self._held

    def free_bytes(self) -> int:
        return self._held - self._used

    def _allocate(self, stream: int, size: int) -> MemoryPointer:
        """A new block: carved from the stream's arena, else from a new allocation. As CuPy:
        past the limit, or when the daemon has no room, free the cached blocks (then collect
        garbage too) and try again before raising OutOfMemoryError. The frees are queued calls
        that reach the daemon before the retry."""
        with self._lock:
            arena = self._arenas.get(stream)
            block = None if arena is None or size >= MAX_CARVED else arena.carve(size)
        if block is not None:
            return block
        refused: CUDARuntimeError | None = None
        for make_room in (_nothing, self.free_all_blocks, self._collect_and_free):
            make_room()
            # an arena for a small block, else (or where the daemon has no room for one, or
            # the limit none) an allocation of the block's own size
            for whole in (ARENA_SIZE, size) if size < MAX_CARVED else (size,):
                if self._limit and self.total_bytes() + whole > self._limit:
                    continue
                try:
                    allocation = self._allocator(whole)
                except CUDARuntimeError as error:
                    if not _is_out_of_memory(error):
                        raise
                    refused = error
                    continue
                with self._lock:
                    arena = Arena(self, allocation, whole)
                    self._held += whole
                    if whole > size:
                        self._arenas[stream] = arena
                block = arena.carve(size)
                assert block is not None
                return block
        raise OutOfMemoryError(size, self.total_bytes(), self._limit) from refused

    def _released(self, size: int) -> None:
        """An arena was collected: its allocation is freed (a queued call)."""
        with self._lock:
            self._held -= size

    def _collect_and_free(self) -> None:
        """Collect garbage (arrays in reference cycles hold blocks), then free the cache."""
        gc.collect()
        self.free_all_blocks()

    def free_all_blocks(self, stream: Stream | None = None) -> None:
        """Drop the cached blocks and stop carving from the current arenas: an arena whose
        blocks are none of them lent any more goes back to the daemon."""
        key = None if stream is None else stream.ptr
        with self._lock:
            for found in [s for s in self._arenas if key is None or s == key]:
                del self._arenas[found]
        self._forget_free(key)

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
        if self._context is current:  # no lock for a pool that is there: every alloc asks
            found = self._pools.get(device)
            if found is not None:
                return found
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
