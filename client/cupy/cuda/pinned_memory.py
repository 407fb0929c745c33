"""Page-locked host memory as CuPy hands it out: ``alloc_pinned_memory`` and its pool.

A block is a :class:`~gpupool.transport.host_blocks.HostBlock`: page-aligned shared memory
that an ``shm://`` session hands to its worker, which registers it with the driver and copies
between it and the device directly (one DMA, as from CuPy's pinned memory); other transports
move its bytes as they move any host buffer's. A ``PinnedMemoryPointer`` exposes the bytes from
its offset to the block's end through the buffer protocol, so ``numpy.frombuffer(ptr, dtype,
count)`` works as with CuPy. Like CuPy's, the pool rounds blocks up to 512 bytes and keeps
freed ones for reuse; a block goes back to it when its last pointer (and every NumPy array
made over it) is collected.
"""

from __future__ import annotations

import ctypes
import functools
import weakref
from collections.abc import Callable
from typing import Any

from gpupool.cupy.cuda._bins import AllocatorChoice, BlockPool, round_size
from gpupool.transport.host_blocks import HostBlock

PinnedAllocator = Callable[[int], "PinnedMemoryPointer"]


class PinnedMemory:
    """One block of host memory."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._block = HostBlock(size)
        self.ptr = self._block.address

    def __int__(self) -> int:
        return self.ptr


class PinnedMemoryPointer:
    """A pointer into pinned memory, usable with ``numpy.frombuffer`` (the bytes to its end).

    Each instance is of a subclass that is also a ctypes byte array of that length: ctypes
    arrays have the buffer protocol, which a Python class cannot have before Python 3.12.
    """

    mem: PinnedMemory | PooledPinnedMemory
    ptr: int

    def __new__(cls, mem: PinnedMemory | PooledPinnedMemory, offset: int) -> Any:
        if not 0 <= offset <= mem.size:
            raise ValueError(f"offset {offset} outside a {mem.size}-byte block")
        pointer = _pointer_type(mem.size - offset).from_address(mem.ptr + offset)
        pointer.mem = mem  # keeps the block alive as long as the pointer (and arrays over it)
        pointer.ptr = mem.ptr + offset
        return pointer

    def __init__(self, mem: PinnedMemory | PooledPinnedMemory, offset: int) -> None:
        """Done in ``__new__`` (this keeps ctypes' own initialiser from running)."""

    def __add__(self, offset: int) -> PinnedMemoryPointer:
        return PinnedMemoryPointer(self.mem, self.ptr - self.mem.ptr + offset)

    def __int__(self) -> int:
        return self.ptr

    def size(self) -> int:
        return self.mem.size - (self.ptr - self.mem.ptr)


@functools.lru_cache(maxsize=256)
def _pointer_type(size: int) -> Any:
    return type("PinnedMemoryPointer", (PinnedMemoryPointer, ctypes.c_char * size), {})


class PooledPinnedMemory:
    """A block lent by a pinned pool, handed back to it when collected."""

    def __init__(self, block: PinnedMemory, pool: PinnedMemoryPool) -> None:
        self.size = block.size
        self.ptr = block.ptr
        weakref.finalize(self, pool._give_back, None, block.size, block).atexit = False


def _malloc(size: int) -> PinnedMemoryPointer:
    return PinnedMemoryPointer(PinnedMemory(size), 0)


class PinnedMemoryPool(BlockPool[PinnedMemory]):
    """CuPy's ``PinnedMemoryPool``: host blocks kept for reuse by size."""

    def __init__(self, allocator: Callable[[int], PinnedMemory] = PinnedMemory) -> None:
        super().__init__()
        self._allocator = allocator

    def malloc(self, size: int) -> PinnedMemoryPointer:
        rounded = round_size(size)
        block = self._lend(None, rounded, lambda: self._allocator(rounded))
        return PinnedMemoryPointer(PooledPinnedMemory(block, self), 0)

    def free_all_blocks(self) -> None:
        self._forget_free()


_choice: AllocatorChoice[PinnedMemoryPool, PinnedMemoryPointer] = AllocatorChoice(
    PinnedMemoryPool, _malloc
)


def get_default_pinned_memory_pool() -> PinnedMemoryPool:
    return _choice.default_pool()


def set_pinned_memory_allocator(allocator: PinnedAllocator | None = None) -> None:
    """Allocate pinned memory with ``allocator``; ``None``: each block on its own, no pool."""
    _choice.set(allocator)


def alloc_pinned_memory(size: int) -> PinnedMemoryPointer:
    """``size`` bytes of host memory from the current pinned allocator."""
    return _choice.get()(size)
