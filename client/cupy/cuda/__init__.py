"""``gpupool.cupy.cuda``: devices, streams, events and memory, with CuPy's names."""

from gpupool.client import runtime
from gpupool.cupy.cuda import compiler, memory, nccl, pinned_memory
from gpupool.cupy.cuda.device import Device
from gpupool.cupy.cuda.memory import (
    Memory,
    MemoryPointer,
    MemoryPool,
    OutOfMemoryError,
    UnownedMemory,
    alloc,
    get_allocator,
    set_allocator,
    using_allocator,
)
from gpupool.cupy.cuda.pinned_memory import (
    PinnedMemory,
    PinnedMemoryPointer,
    PinnedMemoryPool,
    alloc_pinned_memory,
    set_pinned_memory_allocator,
)
from gpupool.cupy.cuda.stream import Event, Stream, get_current_stream, get_elapsed_time


def is_available() -> bool:
    """True when a daemon with at least one device is reachable (``GPUPOOL_DAEMONS``)."""
    try:
        return runtime.getDeviceCount() > 0
    except Exception:
        return False


__all__ = [
    "Device",
    "Event",
    "Memory",
    "MemoryPointer",
    "MemoryPool",
    "OutOfMemoryError",
    "PinnedMemory",
    "PinnedMemoryPointer",
    "PinnedMemoryPool",
    "Stream",
    "UnownedMemory",
    "alloc",
    "alloc_pinned_memory",
    "compiler",
    "get_allocator",
    "get_current_stream",
    "get_elapsed_time",
    "is_available",
    "memory",
    "nccl",
    "pinned_memory",
    "runtime",
    "set_allocator",
    "set_pinned_memory_allocator",
    "using_allocator",
]
