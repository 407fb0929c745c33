"""What each worker of a device has done, counted in shared memory the front process reads.

Copies, launches and array operations run in the session's worker, a process of its own, yet
``/metrics`` is served by the front. So each device has one table of 64-bit cells in a file
every worker maps (a :class:`~gpupool.server.ledger.SharedTable`, as the memory ledgers
are), a row per worker slot: the worker adds to its own row on the hot path (one store into
a mapped page, no message, no lock: a row has one writer), and the front sums the rows when
it is scraped. When a worker
has ended, the front folds its row into the totals of its session's transport and clears it
before the slot is used again, so the totals only ever grow, however a worker ends (a killed
worker has nothing to report at exit: its row is already there).

Aligned 64-bit stores are not torn on the hosts we run on; a scrape may see a row a few
operations behind its worker, never a count that goes back.
"""

from __future__ import annotations

import threading
import time
from enum import IntEnum

import numpy as np

from gpupool.server.ledger import SharedTable

TRANSPORTS = ("grpc", "ucx", "tcp", "shm")
COLLECTIVES = ("all_reduce", "all_gather", "reduce_scatter", "broadcast", "reduce")


class Cell(IntEnum):
    """The cells of a worker's row. The worker writes all but ``TRANSPORT`` (the front's)."""

    HTOD_BYTES = 0
    DTOH_BYTES = 1
    DTOD_BYTES = 2
    LAUNCHES = 3
    ARRAY_OPS = 4
    BUSY_NS = 5  # time spent serving messages (utilisation on the emulator)
    PEER_SENT_BYTES = 6  # device-to-device copies to or from another daemon's device
    PEER_RECEIVED_BYTES = 7
    COLLECTIVE_BYTES = 8  # + COLLECTIVES.index(op): bytes this device sent in collectives
    TRANSPORT = COLLECTIVE_BYTES + len(COLLECTIVES)  # 1 + TRANSPORTS.index(t); 0: no session


CELLS = Cell.TRANSPORT + 1
DIRECTIONS = {"htod": Cell.HTOD_BYTES, "dtoh": Cell.DTOH_BYTES, "dtod": Cell.DTOD_BYTES}
PEERS = {"sent": Cell.PEER_SENT_BYTES, "received": Cell.PEER_RECEIVED_BYTES}


class CounterTable(SharedTable):
    """The rows of one device's workers."""

    COLUMNS = CELLS


class SlotCounters:
    """A worker's row, as the worker adds to it."""

    def __init__(self, cells: memoryview, table: CounterTable | None = None) -> None:
        self._cells = cells
        self._table = table  # what maps the row, alive as long as the row

    @classmethod
    def attach(cls, inherited_fd: int, slot: int) -> SlotCounters:
        """The row of ``slot`` in the table whose descriptor this worker inherited."""
        table = CounterTable.attach(inherited_fd)
        return cls(table.unlocked()[slot * CELLS : (slot + 1) * CELLS], table)

    @classmethod
    def detached(cls) -> SlotCounters:
        """A row of its own, read by nobody (an executor outside a daemon's worker)."""
        return cls(memoryview(bytearray(CELLS * 8)).cast("q"))

    def close(self) -> None:
        """Unmap the row (a worker need not: its end does)."""
        self._cells.release()
        if self._table is not None:
            self._table.close()

    def copied(self, cell: Cell, size: int) -> None:
        self._cells[cell] += size

    def launched(self, count: int = 1) -> None:
        self._cells[Cell.LAUNCHES] += count

    def array_op(self) -> None:
        self._cells[Cell.ARRAY_OPS] += 1

    def busy(self, nanoseconds: int) -> None:
        self._cells[Cell.BUSY_NS] += nanoseconds

    def peer_copied(self, direction: str, size: int) -> None:
        """A device-to-device copy between this device and one of another daemon:
        ``direction`` is ``sent`` (this device was the source) or ``received``."""
        cell = PEERS.get(direction)
        if cell is None:
            raise ValueError(f"a peer copy is sent or received, not {direction!r}")
        self._cells[cell] += size

    def collective(self, op: str, size: int) -> None:
        """``size`` bytes this device sent for the collective ``op`` (one of COLLECTIVES)."""
        if op not in COLLECTIVES:
            raise ValueError(f"unknown collective {op!r}; one of {', '.join(COLLECTIVES)}")
        self._cells[Cell.COLLECTIVE_BYTES + COLLECTIVES.index(op)] += size


class DeviceCounters:
    """The front's side of one device's block: rows assigned, retired and summed."""

    def __init__(self, slots: int) -> None:
        self._table = CounterTable.create(slots)
        self._rows = np.frombuffer(self._table.unlocked(), dtype=np.int64).reshape(slots, CELLS)
        self._retired = np.zeros((len(TRANSPORTS), CELLS), dtype=np.int64)
        self._lock = threading.Lock()
        self.starts = 0  # workers started
        self.crashes = 0  # workers that ended neither cleanly nor killed by the front

    def fileno(self) -> int:
        return self._table.fileno()

    def assign(self, slot: int, transport: str) -> None:
        """The worker in ``slot`` serves a session over ``transport``: its counts count."""
        self._rows[slot, Cell.TRANSPORT] = 1 + TRANSPORTS.index(transport)

    def retire(self, slot: int) -> None:
        """Fold the row of ``slot``, whose worker has ended, into the totals; clear it."""
        with self._lock:
            row = self._rows[slot]
            code = int(row[Cell.TRANSPORT])
            if code:
                self._retired[code - 1] += row
            row[:] = 0

    def totals(self) -> dict[str, np.ndarray]:
        """Every cell summed over the workers, live and ended, by transport."""
        with self._lock:
            rows = self._rows.copy()
            totals = self._retired.copy()
        codes = rows[:, Cell.TRANSPORT]
        for index in range(len(TRANSPORTS)):
            totals[index] += rows[codes == index + 1].sum(axis=0)
        return {transport: totals[index] for index, transport in enumerate(TRANSPORTS)}

    def busy_ns(self) -> int:
        """Time all the device's workers, live and ended, spent serving messages."""
        return summed(self.totals(), Cell.BUSY_NS)

    def close(self) -> None:
        del self._rows  # the table's cells can be released only once no view holds them
        self._table.close()


def summed(totals: dict[str, np.ndarray], cell: int) -> int:
    """One cell of :meth:`DeviceCounters.totals`, over every transport."""
    return int(sum(row[cell] for row in totals.values()))


class BusyShare:
    """The share of time a device's workers spent serving, over the last window of at least
    ``window_s`` (the emulator's utilisation; several sessions at once count up to 1).

    Each reader keeps its own: the heartbeat and a scrape come at their own paces.
    """

    def __init__(self, counters: DeviceCounters, window_s: float = 1.0) -> None:
        self._counters = counters
        self._window_s = window_s
        self._lock = threading.Lock()
        self._since, self._before, self._share = time.monotonic(), counters.busy_ns(), 0.0

    def __call__(self) -> float:
        busy = self._counters.busy_ns()
        with self._lock:
            now = time.monotonic()
            if now - self._since >= self._window_s:
                self._share = min(1.0, (busy - self._before) / 1e9 / (now - self._since))
                self._since, self._before = now, busy
            return self._share
