"""One address space per program: a device pointer says which device of the context it is on.

CUDA's unified addressing lets a program (and CuPy's peer copies) hand any pointer to
``cudaMemcpy(..., cudaMemcpyDefault)``. Here each device ordinal's pointers carry a tag in
their high bits: bit 62 set, the ordinal in bits 48..61, the daemon's own address (below
2**48, as every x86-64 and CUDA virtual address is) underneath. The client strips the tag
wherever a pointer goes on the wire (runtime calls, array operands, kernel arguments), so a
daemon only ever sees its own addresses. Tagged pointers stay positive int64s, and an
integer with bit 62 set is far above any size or index a kernel takes.
"""

from __future__ import annotations

from gpupool.errors import CUDARuntimeError

TAG = 1 << 62
SHIFT = 48
RAW = (1 << SHIFT) - 1
MAX_ORDINAL = (1 << (62 - SHIFT)) - 1


def tag(ordinal: int, raw: int) -> int:
    """The program's pointer for the daemon address ``raw`` on device ``ordinal``."""
    if raw == 0:
        return 0  # NULL stays NULL (a zero-byte malloc)
    if not 0 <= raw <= RAW or not 0 <= ordinal <= MAX_ORDINAL:
        raise CUDARuntimeError(
            "cudaErrorUnknown", f"device {ordinal} returned address 0x{raw:x}, above 2**48"
        )
    return TAG | ordinal << SHIFT | raw


def is_device(ptr: int) -> bool:
    """Whether ``ptr`` is a tagged device pointer (else a host address, or a raw one)."""
    return ptr >> 62 == 1


def device_of(ptr: int, default: int) -> int:
    """The ordinal ``ptr`` names; ``default`` (the current device) for an untagged one."""
    return (ptr >> SHIFT) & MAX_ORDINAL if ptr >> 62 == 1 else default


def raw(ptr: int) -> int:
    """The daemon's own address of ``ptr`` (an untagged one as it is)."""
    return ptr & RAW if ptr >> 62 == 1 else ptr
