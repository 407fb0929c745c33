"""Device memory as CuPy hands it out: ``MemoryPointer`` and ``alloc``.

Freed when the last pointer to the allocation goes away (the free is queued, not waited for).
"""

from __future__ import annotations

import weakref

from gpupool.client import runtime


class Memory:
    """One device allocation, freed when collected."""

    def __init__(self, size: int) -> None:
        self.device_id = runtime.getDevice()
        self.size = size
        self.ptr = runtime.malloc(size) if size else 0
        if self.ptr:
            weakref.finalize(self, _free, self.device_id, self.ptr)


def _free(device: int, ptr: int) -> None:
    current = runtime.getDevice()
    try:
        runtime.setDevice(device)
        runtime.free(ptr)
    finally:
        runtime.setDevice(current)


class MemoryPointer:
    """A pointer into an allocation, keeping it alive."""

    def __init__(self, mem: Memory, offset: int) -> None:
        self.mem = mem
        self.ptr = mem.ptr + offset
        self.device_id = mem.device_id

    def __add__(self, offset: int) -> MemoryPointer:
        return MemoryPointer(self.mem, self.ptr - self.mem.ptr + offset)


def alloc(size: int) -> MemoryPointer:
    return MemoryPointer(Memory(size), 0)
