"""Host memory that an ``shm://`` link can hand to its worker instead of copying it.

The CuPy shim's pinned memory lives in these blocks. A block of at least :data:`SHARE_MIN`
bytes is a sealed memfd mapped here and entered in a registry (by id, searched by address),
so that a copy from or to any host buffer inside it can be named as (block, offset): an
``shm://`` link passes the block's descriptor to its worker once, and the worker, which maps
the same pages and registers them with the driver, copies between them and the device in
one DMA, with no pass through the ring. Smaller blocks are plain anonymous maps: no copy
that small goes by reference (it travels inside its message), and every shared block keeps
a file descriptor open.

When a block is collected, the links it was shared with are told (:meth:`Holder.forget`),
from whatever thread the collection happens in, so that they can ask their workers to unmap
it.
"""

from __future__ import annotations

import ctypes
import itertools
import mmap
import os
import weakref
from typing import Protocol

import numpy as np

from gpupool.proto.limits import INLINE_LIMIT
from gpupool.transport import memfd

SHARE_MIN = INLINE_LIMIT  # a copy up to it travels inside its message, never by reference

_ids = itertools.count(1)
_blocks: weakref.WeakValueDictionary[int, HostBlock] = weakref.WeakValueDictionary()


class Holder(Protocol):
    """A link that shared a block with its worker."""

    def forget(self, block: int) -> None:
        """The block is gone: drop it at the worker. Called from any thread; must not block."""


class HostBlock:
    """``size`` bytes of host memory at ``address``, shareable when ``fd`` is not None."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.id = next(_ids)
        self.fd: int | None = None
        if size >= SHARE_MIN:
            self.fd = memfd.create(f"gpupool-pinned-{os.getpid()}-{self.id}", size)
        try:
            self._map = mmap.mmap(-1 if self.fd is None else self.fd, max(size, 1))
        except BaseException:
            if self.fd is not None:
                os.close(self.fd)
            raise
        self.address = ctypes.addressof(ctypes.c_char.from_buffer(self._map))
        self._holders: weakref.WeakSet[Holder] = weakref.WeakSet()
        weakref.finalize(self, _release, self.id, self._map, self.fd, self._holders)
        if self.fd is not None:
            _blocks[self.id] = self

    def shared_with(self, holder: Holder) -> None:
        """Tell ``holder`` when this block is freed."""
        self._holders.add(holder)


def find(view: memoryview) -> tuple[HostBlock, int] | None:
    """The shareable block ``view`` lies in, and its offset there; None for other memory."""
    if not _blocks:
        return None
    address = np.frombuffer(view, np.uint8).ctypes.data
    for block in list(_blocks.values()):
        offset = address - block.address
        if 0 <= offset and offset + len(view) <= block.size:
            return block, offset
    return None


def _release(
    block: int, memory: mmap.mmap, fd: int | None, holders: weakref.WeakSet[Holder]
) -> None:
    _blocks.pop(block, None)
    for holder in list(holders):
        holder.forget(block)
    memory.close()
    if fd is not None:
        os.close(fd)
