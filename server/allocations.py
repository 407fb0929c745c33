"""The allocations of one session, so that every pointer a request names can be checked.

A real GPU would fault, or worse write into another allocation, on a copy past the end of an
allocation; the daemon refuses such a request with ``cudaErrorInvalidValue`` before the
backend sees it. Kernels get no such check (a kernel's pointers are data, as on a GPU).
"""

from __future__ import annotations

import bisect
from typing import TYPE_CHECKING

from gpupool.errors import CUDARuntimeError
from gpupool.units import format_size

if TYPE_CHECKING:
    from gpupool.server.ledger import QuotaAccount


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

    def check(self, ptr: int, size: int, what: str) -> int:
        """Raise unless ``[ptr, ptr + size)`` lies inside one allocation of this session;
        the base of that allocation."""
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
        return base

    @staticmethod
    def _not_owned(ptr: int, what: str) -> CUDARuntimeError:
        return CUDARuntimeError(
            "cudaErrorInvalidValue",
            f"{what}: 0x{ptr:x} is not inside an allocation of this session",
        )


class MemoryQuota:
    """A session's memory quota: its grant's share of the device, held by all the sessions of
    that allocation on the device together.

    ``limit`` None is a bare daemon's session with no limit set (the device's memory is the
    limit); any number, 0 included, is a limit. Counts the session's own allocations, what
    the backend holds on its behalf (CuPy's memory pool, for array operations) and its CUDA
    context, in the ``account`` it shares with the allocation's other sessions (a
    :class:`~gpupool.server.ledger.QuotaAccount`; None: this session alone). The check is on
    requested bytes, as a tenant counts them.
    """

    def __init__(
        self, limit: int | None = None, context: int = 0, account: QuotaAccount | None = None
    ) -> None:
        self.limit = limit
        self.used = 0
        self._context = context
        self._account = account
        if account is not None:
            account.hold(context, None, 0)  # the context is there, whatever the quota

    def reserve(self, size: int, held_elsewhere: int) -> None:
        """Count ``size`` more bytes; cudaErrorMemoryAllocation when they pass the quota."""
        held = self._context + self.used + held_elsewhere + size
        if self._account is not None:
            self._account.hold(held, self.limit, size)
        elif self.limit is not None and held > self.limit:
            in_use = format_size(held - size)
            raise CUDARuntimeError(
                "cudaErrorMemoryAllocation",
                f"out of memory allocating {size} bytes: the session's quota is"
                f" {format_size(self.limit)} and {in_use} of it is in use",
            )
        self.used += size

    def release(self, size: int, held_elsewhere: int = 0) -> None:
        self.used -= size
        if self._account is not None:
            self._account.hold(self._context + self.used + held_elsewhere, None, 0)

    def room(self) -> int | None:
        """What is left of the quota for the backend's own allocations."""
        if self.limit is None:
            return None
        return max(0, self.limit - self._others() - self._context - self.used)

    def total(self, device_total: int) -> int:
        """The device's memory as the session sees it: its quota less its own context."""
        if self.limit is None:
            return device_total
        return max(0, min(self.limit, device_total) - self._context)

    def report(self, free: int, total: int, held_elsewhere: int) -> tuple[int, int]:
        """``memGetInfo`` as the session sees it: the quota is its device's total."""
        if self.limit is None:
            return free, total
        held = self._others() + self._context + self.used + held_elsewhere
        return max(0, min(free, self.limit - held)), self.total(total)

    def _others(self) -> int:
        return 0 if self._account is None else self._account.others()
