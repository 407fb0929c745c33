"""The allocations of one session, so that every pointer a request names can be checked.

A real GPU would fault, or worse write into another allocation, on a copy past the end of an
allocation; the daemon refuses such a request with ``cudaErrorInvalidValue`` before the
backend sees it. Kernels get no such check (a kernel's pointers are data, as on a GPU).
"""

from __future__ import annotations

import bisect

from gpupool.errors import CUDARuntimeError


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
