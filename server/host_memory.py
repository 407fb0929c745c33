"""Host memory a client shared with its session's worker (``shm://``): the other end of
``gpupool.transport.host_blocks``.

A block arrives once, as a file descriptor; the worker maps it, registers the mapping with the
driver (``cudaHostRegister`` on a GPU) and from then on copies between the device and the
mapping in one DMA whenever a copy names (block, offset). Nothing the client sends is
trusted: the descriptor must be a memfd sealed against resizing (else the client could
shrink it under the worker, which would die of SIGBUS), ids must be new, every reference is
checked against its block's size, and one session may share at most :data:`MAX_BLOCKS`
blocks and :func:`share_limit` bytes (registered pages are locked in host memory). A
refusal is a ``CUDARuntimeError`` with CUDA's name for it; the session goes on.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterable
from dataclasses import dataclass

from gpupool.errors import CUDARuntimeError
from gpupool.proto import gpupool_pb2 as pb
from gpupool.server.backends import Translate, translated
from gpupool.server.backends.base import Backend
from gpupool.transport import memfd
from gpupool.units import parse_size

ENV_LIMIT = "GPUPOOL_SHM_SHARE_LIMIT"  # bytes one session may share, e.g. 16GiB
MAX_BLOCKS = 1024


def share_limit() -> int:
    """Bytes one session may share: ``GPUPOOL_SHM_SHARE_LIMIT``, else half the host's memory."""
    text = os.environ.get(ENV_LIMIT)
    if text:
        return parse_size(text)
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2


@dataclass
class _Block:
    memory: mmap.mmap
    view: memoryview


class SharedHostMemory:
    """The blocks one session's client shared, by the client's ids."""

    def __init__(self, backend: Backend, translate: Translate, limit: int) -> None:
        self._backend = backend
        self._translate = translate
        self.limit = limit
        self._blocks: dict[int, _Block] = {}
        self.shared_bytes = 0

    def __len__(self) -> int:
        return len(self._blocks)

    def add(self, block: int, fd: int | None) -> None:
        """Map and register the block the client passed as ``fd`` (closed here, whatever
        happens); refused with a ``CUDARuntimeError``."""
        if fd is None:
            raise _invalid(f"host block {block} came without a file descriptor")
        try:
            if block == 0 or block in self._blocks:
                raise _invalid(f"host block {block} is zero or already shared")
            try:
                size = memfd.check(fd)
            except ValueError as exc:
                raise _invalid(f"host block {block}: {exc}") from None
            if size == 0:
                raise _invalid(f"host block {block} is empty")
            if len(self._blocks) >= MAX_BLOCKS or self.shared_bytes + size > self.limit:
                raise CUDARuntimeError(
                    "cudaErrorMemoryAllocation",
                    f"host block {block} of {size} bytes: a session may share at most"
                    f" {MAX_BLOCKS} blocks and {self.limit} bytes ({len(self._blocks)} blocks,"
                    f" {self.shared_bytes} bytes shared)",
                )
            try:
                memory = mmap.mmap(fd, size)
            except PermissionError as exc:  # sealed against writes, or opened read-only
                raise _invalid(f"host block {block} cannot be mapped for writing: {exc}") from exc
            except OSError as exc:
                raise CUDARuntimeError(
                    "cudaErrorMemoryAllocation", f"host block {block}: {exc}"
                ) from exc
        finally:
            os.close(fd)
        view = memoryview(memory)
        try:
            translated(self._translate, lambda: self._backend.register_host(view))
        except BaseException:
            view.release()
            memory.close()
            raise
        self._blocks[block] = _Block(memory, view)
        self.shared_bytes += size

    def drop(self, blocks: Iterable[int]) -> None:
        """Unregister and unmap blocks the client freed; ids it never shared are ignored (a
        drop can only undo a share)."""
        for block in blocks:
            found = self._blocks.pop(block, None)
            if found is not None:
                self._release(found)

    def view(self, ref: pb.HostRef, size: int) -> memoryview:
        """The ``size`` bytes ``ref`` names; ``cudaErrorInvalidValue`` when they are not all
        inside a block this session shared."""
        found = self._blocks.get(ref.block)
        if found is None:
            raise _invalid(f"host block {ref.block} was not shared with this session")
        if ref.offset + size > len(found.view):
            raise _invalid(
                f"{size} bytes at offset {ref.offset} of host block {ref.block} reach past its"
                f" {len(found.view)} bytes"
            )
        return found.view[ref.offset : ref.offset + size]

    def close(self) -> None:
        """Release every block (the session ended)."""
        self.drop(list(self._blocks))

    def _release(self, block: _Block) -> None:
        self.shared_bytes -= len(block.view)
        try:
            translated(self._translate, lambda: self._backend.unregister_host(block.view))
        finally:
            block.view.release()
            block.memory.close()


def _invalid(detail: str) -> CUDARuntimeError:
    return CUDARuntimeError("cudaErrorInvalidValue", detail)
