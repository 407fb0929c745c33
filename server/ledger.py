"""Counters that every worker of one device shares: a table of int64 rows, one a worker slot.

Each worker is its own process, so what must hold across the sessions of a device (the
emulator's capacity, an allocation's memory quota) is kept in a file they all map. The file
has no name (it is deleted as soon as it is made), so nothing is left behind however the
daemon ends; workers inherit its descriptor and reopen it through ``/proc/self/fd``, because
``flock`` excludes only separate opens of a file, and it is ``flock`` that serialises a
check-and-reserve across processes. A slot's row is cleared by the front when its worker
has ended, so a killed session's bytes come back at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import tempfile
from collections.abc import Iterator
from typing import BinaryIO, TypeVar

import numpy as np

from gpupool.errors import CUDARuntimeError
from gpupool.units import format_size

L = TypeVar("L", bound="SharedTable")


class SharedTable:
    """``slots`` rows of ``COLUMNS`` int64 counters in a shared, unnamed file."""

    COLUMNS = 1

    def __init__(self, file: BinaryIO) -> None:
        self._file = file
        self._map = mmap.mmap(file.fileno(), 0)
        self._cells = memoryview(self._map).cast("q")

    @classmethod
    def create(cls: type[L], slots: int) -> L:
        folder = "/dev/shm" if os.path.isdir("/dev/shm") else None
        file = tempfile.TemporaryFile(prefix="gpupool-ledger-", dir=folder)
        file.truncate(slots * cls.COLUMNS * 8)
        return cls(file)

    @classmethod
    def attach(cls: type[L], inherited_fd: int) -> L:
        """The table whose descriptor this worker inherited, opened anew."""
        file = open(f"/proc/self/fd/{inherited_fd}", "r+b")
        os.close(inherited_fd)
        return cls(file)

    def fileno(self) -> int:
        return self._file.fileno()

    @contextlib.contextmanager
    def locked(self) -> Iterator[memoryview]:
        """The cells, row-major, with every other process of the device kept out."""
        fcntl.flock(self._file, fcntl.LOCK_EX)
        try:
            yield self._cells
        finally:
            fcntl.flock(self._file, fcntl.LOCK_UN)

    def clear(self, slot: int) -> None:
        """Forget everything ``slot`` held: its worker has ended."""
        with self.locked() as cells:
            start = slot * self.COLUMNS
            cells[start : start + self.COLUMNS] = memoryview(bytes(8 * self.COLUMNS)).cast("q")

    def close(self) -> None:
        self._cells.release()
        self._map.close()
        self._file.close()


class QuotaLedger(SharedTable):
    """The memory each worker of a device holds, by allocation, so that one grant's quota
    holds across all the sessions opened with it (each its own worker) on that device.

    A row is (group, bytes): the front writes the group of a worker's allocation before the
    session reaches the worker (0: a session of no allocation, which shares with nobody); the
    worker writes the bytes it holds, its CUDA context included.
    """

    COLUMNS = 2

    def assign(self, slot: int, group: int) -> None:
        with self.locked() as cells:
            cells[2 * slot], cells[2 * slot + 1] = group, 0

    def held(self) -> int:
        """Bytes held by every worker of the device, whatever their allocation."""
        with self.locked() as cells:
            return sum(cells[1::2])

    def account(self, slot: int) -> QuotaAccount:
        return QuotaAccount(self, slot)


class QuotaAccount:
    """One worker's row of a :class:`QuotaLedger`."""

    def __init__(self, ledger: QuotaLedger, slot: int) -> None:
        self._ledger = ledger
        self._slot = slot

    def others(self) -> int:
        """Bytes the other sessions of this worker's allocation hold on the device."""
        with self._ledger.locked() as cells:
            return _held_by(cells, cells[2 * self._slot], self._slot)

    def hold(self, held: int, limit: int | None, asked: int) -> None:
        """Record that this worker holds ``held`` bytes, unless with the other sessions of its
        allocation that passes ``limit``: cudaErrorMemoryAllocation for ``asked`` more."""
        with self._ledger.locked() as cells:
            others = 0 if limit is None else _held_by(cells, cells[2 * self._slot], self._slot)
            if limit is not None and others + held > limit:
                in_use = format_size(others + held - asked)
                raise CUDARuntimeError(
                    "cudaErrorMemoryAllocation",
                    f"out of memory allocating {asked} bytes: the allocation's quota on this"
                    f" device is {format_size(limit)} and its sessions use {in_use} of it",
                )
            cells[2 * self._slot + 1] = held


def _held_by(cells: memoryview, group: int, besides: int) -> int:
    """Bytes held by the slots of ``group`` other than ``besides`` (none for group 0)."""
    if group == 0:
        return 0
    rows = np.frombuffer(cells, np.int64).reshape(-1, 2)  # a view: (group, bytes) a slot
    return int(rows[rows[:, 0] == group, 1].sum()) - (
        rows[besides, 1] if rows[besides, 0] == group else 0
    )
