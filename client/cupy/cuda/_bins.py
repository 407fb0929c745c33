"""Free blocks by size: what the device and pinned memory pools keep for reuse."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, TypeVar

ALLOCATION_UNIT = 512  # CuPy's pools round every block up to this

Block = TypeVar("Block")


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
