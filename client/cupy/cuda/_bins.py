"""What the device and pinned memory pools share: free blocks by size, the current allocator."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Hashable, Iterator
from typing import Any, Generic, Protocol, TypeVar

ALLOCATION_UNIT = 512  # CuPy's pools round every block up to this

Block = TypeVar("Block")
Pointer = TypeVar("Pointer")


class _Pool(Protocol):
    def malloc(self, size: int) -> Any: ...


Pool = TypeVar("Pool", bound=_Pool)


def round_size(size: int) -> int:
    """``size`` rounded up to the pools' allocation unit."""
    return -(-size // ALLOCATION_UNIT) * ALLOCATION_UNIT


class BlockPool(Generic[Block]):
    """A pool's bookkeeping: blocks lent out (counted), and free ones kept under a key (their
    size, and their stream for device blocks) to be lent again."""

    def __init__(self) -> None:
        self._blocks: dict[tuple[Hashable, int], list[Block]] = {}
        self._free_bytes = 0
        self._used = 0
        self._lock = threading.RLock()  # RLock: a block may come back (GC) while it is held

    def _lend(self, key: Hashable, size: int, allocate: Callable[[], Block]) -> Block:
        """A free block of exactly ``size`` bytes under ``key``, else ``allocate()``'s (called
        without the lock: it may wait for the daemon, and collected blocks must come back
        meanwhile)."""
        with self._lock:
            blocks = self._blocks.get((key, size))
            if blocks:
                self._free_bytes -= size
                self._used += size
                return blocks.pop()
        block = allocate()
        with self._lock:
            self._used += size
        return block

    def _give_back(self, key: Hashable, size: int, block: Block) -> None:
        with self._lock:
            self._used -= size
            self._blocks.setdefault((key, size), []).append(block)
            self._free_bytes += size

    def _forget_free(self, key: Hashable | None = None) -> None:
        """Drop the free blocks (of ``key`` only, when given): their owners release them."""
        with self._lock:
            for found in [k for k in self._blocks if key is None or k[0] == key]:
                self._free_bytes -= found[1] * len(self._blocks.pop(found))

    def n_free_blocks(self) -> int:
        with self._lock:
            return sum(len(blocks) for blocks in self._blocks.values())

    def used_bytes(self) -> int:
        return self._used

    def free_bytes(self) -> int:
        return self._free_bytes

    def total_bytes(self) -> int:
        return self._used + self._free_bytes


class AllocatorChoice(Generic[Pool, Pointer]):
    """The allocator in use: the default pool's ``malloc`` (the pool made on first use) until
    ``set`` names another; ``set(None)`` allocates each block on its own."""

    def __init__(self, make_pool: Callable[[], Pool], plain: Callable[[int], Pointer]) -> None:
        self._make_pool = make_pool
        self._plain = plain
        self._pool: Pool | None = None
        self._allocator: Callable[[int], Pointer] | None = None

    def default_pool(self) -> Pool:
        if self._pool is None:
            self._pool = self._make_pool()
        return self._pool

    def set(self, allocator: Callable[[int], Pointer] | None) -> None:
        self._allocator = self._plain if allocator is None else allocator

    def get(self) -> Callable[[int], Pointer]:
        if self._allocator is not None:
            return self._allocator
        return self.default_pool().malloc

    @contextlib.contextmanager
    def using(self, allocator: Callable[[int], Pointer] | None) -> Iterator[None]:
        """``set(allocator)`` for a while, then the choice made before (process-wide, not per
        thread as CuPy's)."""
        previous = self._allocator
        self.set(allocator)
        try:
            yield
        finally:
            self._allocator = previous
