"""What the device and pinned memory pools share: free blocks by size, the current allocator."""

from __future__ import annotations

from collections.abc import Callable, Hashable
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


class FreeBlocks(Generic[Block]):
    """Blocks not in use, each under a key (its size, and its stream for device blocks)."""

    def __init__(self) -> None:
        self._blocks: dict[tuple[Hashable, int], list[Block]] = {}
        self.nbytes = 0

    def take(self, key: Hashable, size: int) -> Block | None:
        """A free block of exactly ``size`` bytes under ``key``, or None."""
        blocks = self._blocks.get((key, size))
        if not blocks:
            return None
        self.nbytes -= size
        return blocks.pop()

    def put(self, key: Hashable, size: int, block: Block) -> None:
        self._blocks.setdefault((key, size), []).append(block)
        self.nbytes += size

    def clear(self, key: Hashable | None = None) -> None:
        """Forget the free blocks (of ``key`` only, when given): their owners release them."""
        for found in [k for k in self._blocks if key is None or k[0] == key]:
            self.nbytes -= found[1] * len(self._blocks.pop(found))

    def __len__(self) -> int:
        return sum(len(blocks) for blocks in self._blocks.values())


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
