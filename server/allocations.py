"""The allocations of one session, so that every pointer a request names can be checked.

A real GPU would fault, or worse write into another allocation, on a copy past the end of an
allocation; the daemon refuses such a request with ``cudaErrorInvalidValue`` before the
backend sees it. Kernels get no such check (a kernel's pointers are data, as on a GPU).
"""

from __future__ import annotations

import bisect

from gpupool.errors import CUDARuntimeError
from gpupool.units import format_size


class AllocationTable:
    """Sorted allocation ranges of one session."""

    def __init__(self) -> None:
        self._bases: list[int] = []
        self._sizes: dict[int, int] = {}

    def add(self, base: int, size: int) -> None:
        bisect.insort(self._bases, base)
        self._sizes[base] = size

    def remove(self, base: int) -> int:
        """Forget the allocation that starts at ``base``; its size."""
        if base not in self._sizes:
            raise CUDARuntimeError(
                "cudaErrorInvalidValue", f"free of 0x{base:x}: not an allocation of this session"
            )
        self._bases.pop(bisect.bisect_left(self._bases, base))
        return self._sizes.pop(base)

    def find(self, ptr: int) -> tuple[int, int] | None:
        """The (base, size) of the allocation ``ptr`` lies in, if any."""
        index = bisect.bisect_right(self._bases, ptr) - 1
        if index < 0:
            return None
        base = self._bases[index]
        return (base, self._sizes[base]) if ptr < base + self._sizes[base] else None

    def check(self, ptr: int, size: int, what: str) -> None:
        """Raise unless ``[ptr, ptr + size)`` lies inside one allocation of this session."""
        index = bisect.bisect_right(self._bases, ptr) - 1
        if index < 0:
            raise self._not_owned(ptr, what)
        base = self._bases[index]
        end = base + self._sizes[base]
        if ptr >= end and not (ptr == end and size == 0):
            raise self._not_owned(ptr, what)
        if ptr + size > end:
            raise CUDARuntimeError(
                "cudaErrorInvalidValue",
                f"{what} of {size} bytes at 0x{ptr:x} runs {ptr + size - end} bytes past the end"
                f" of its {end - base}-byte allocation at 0x{base:x}",
            )

    @staticmethod
    def _not_owned(ptr: int, what: str) -> CUDARuntimeError:
        return CUDARuntimeError(
            "cudaErrorInvalidValue",
            f"{what}: 0x{ptr:x} is not inside an allocation of this session",
        )


class MemoryQuota:
    """A session's memory quota from its grant (None: the device's memory is the limit).

    Counts the session's own allocations plus what the backend holds on its behalf (CuPy's
    memory pool, for array operations), so the two together never pass the quota. The
    check is on requested bytes, as a tenant counts them.
    """

    def __init__(self, limit: int | None = None) -> None:
        self.limit = limit
        self.used = 0

    def reserve(self, size: int, held_elsewhere: int) -> None:
        """Count ``size`` more bytes; cudaErrorMemoryAllocation when they pass the quota."""
        if self.limit is not None and self.used + held_elsewhere + size > self.limit:
            in_use = format_size(self.used + held_elsewhere)
            raise CUDARuntimeError(
                "cudaErrorMemoryAllocation",
                f"out of memory allocating {size} bytes: the session's quota is"
                f" {format_size(self.limit)} and {in_use} of it is in use",
            )
        self.used += size

    def release(self, size: int) -> None:
        self.used -= size

    def room(self) -> int | None:
        """What is left of the quota for the backend's own allocations."""
        return None if self.limit is None else self.limit - self.used

    def report(self, free: int, total: int, held_elsewhere: int) -> tuple[int, int]:
        """``memGetInfo`` as the session sees it: the quota is its device's total."""
        if self.limit is None:
            return free, total
        return min(free, self.limit - self.used - held_elsewhere), self.limit
