"""Collectives as one rank's walk around a ring of peer links (NCCL's ring algorithms).

Every rank of a collective runs the same steps at the same time, each in its own worker: it
sends to the next rank on the link it opened, receives from the previous rank's link, and
reduces what it received into its own buffer with the backend's array module (NumPy on the
emulator, CuPy on a GPU), on the call's stream. A send runs in a thread beside the receive of
the same step, so neighbours never wait on each other's sockets.

All-reduce is a reduce-scatter then an all-gather, 2(N-1) steps, each moving 1/N of the
buffer: the bandwidth-optimal ring, whose bus bandwidth nccl-tests define as the algorithm
bandwidth times 2(N-1)/N.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from gpupool.errors import CUDARuntimeError
from gpupool.proto import gpupool_pb2 as pb
from gpupool.server.backends.base import Backend

Move = Callable[[int, int], None]  # (device pointer, bytes)
PIECE = 4 << 20  # a broadcast is forwarded in pieces of this size, pipelined along the ring
MAX_RANKS = 4096
_sender = ThreadPoolExecutor(1, "collective-send")


def _reducers(xp: Any) -> dict[str, Callable[..., Any]]:
    return {
        "sum": xp.add,
        "avg": xp.add,
        "prod": xp.multiply,
        "max": xp.maximum,
        "min": xp.minimum,
    }


def _invalid(problem: str) -> CUDARuntimeError:
    return CUDARuntimeError("cudaErrorInvalidValue", f"collective: {problem}")


class RingCollective:
    """One rank's part of ``call``, checked on construction."""

    def __init__(
        self,
        call: pb.Collective,
        backend: Backend,
        stream: object,
        failed: Callable[[], bool] = lambda: False,
    ) -> None:
        """``failed`` says the walk only passes an error on now: nothing is copied or reduced."""
        self.call = call
        self.backend = backend
        self.stream = stream
        self._failed = failed
        try:
            self.dtype = np.dtype(call.dtype)
        except TypeError:
            raise _invalid(f"dtype {call.dtype!r} is not a NumPy dtype") from None
        if self.dtype.kind not in "biufc" or self.dtype.byteorder == ">":
            raise _invalid(f"dtype {call.dtype!r} is not a native numeric type")
        if call.op not in ("sum", "avg", "prod", "max", "min"):
            raise _invalid(f"reduction {call.op!r} (sum, prod, max, min, avg)")
        if not 1 <= call.ranks <= MAX_RANKS or call.rank >= call.ranks or call.root >= call.ranks:
            raise _invalid(f"rank {call.rank}, root {call.root} of {call.ranks} ranks")
        if call.count * self.dtype.itemsize * call.ranks >= 1 << 48:
            raise _invalid(f"{call.count} elements per rank")
        self.ranks = call.ranks
        self.rank = call.rank
        self.itemsize = self.dtype.itemsize

    def buffer_sizes(self) -> tuple[int, int]:
        """Bytes of the send and the receive buffer the call names."""
        nbytes = self.call.count * self.itemsize
        kind = self.call.kind
        if kind == pb.Collective.ALL_GATHER:
            return nbytes, nbytes * self.ranks
        if kind == pb.Collective.REDUCE_SCATTER:
            return nbytes * self.ranks, nbytes
        if kind == pb.Collective.REDUCE and self.rank != self.call.root:
            return nbytes, 0
        return nbytes, nbytes

    def scratch_bytes(self) -> int:
        """Device memory the walk needs for what it receives before reducing it."""
        kind = self.call.kind
        if kind in (pb.Collective.BROADCAST, pb.Collective.ALL_GATHER) or self.ranks == 1:
            return 0
        total = self.call.count * self.itemsize
        if kind == pb.Collective.REDUCE_SCATTER:
            total *= self.ranks
        largest = max(n for _o, n in self._chunks(total // self.itemsize))
        own = total if kind in (pb.Collective.REDUCE, pb.Collective.REDUCE_SCATTER) else 0
        return largest * self.itemsize + own

    def run(self, scratch: int, send: Move, receive: Move) -> None:
        call, kind = self.call, self.call.kind
        nbytes = call.count * self.itemsize
        if kind == pb.Collective.ALL_REDUCE:
            self._copy(call.recv, call.send, nbytes)
            self._all_reduce(call.recv, call.count, scratch, send, receive)
        elif kind == pb.Collective.REDUCE:
            # an all-reduce into scratch, of which the root keeps the result
            work = scratch + self._largest_chunk_bytes(call.count)
            self._copy(work, call.send, nbytes)
            self._all_reduce(work, call.count, scratch, send, receive)
            if self.rank == call.root:
                self._copy(call.recv, work, nbytes)
        elif kind == pb.Collective.BROADCAST:
            self._broadcast(call.send, call.recv, nbytes, send, receive)
        elif kind == pb.Collective.ALL_GATHER:
            self._copy(call.recv + self.rank * nbytes, call.send, nbytes)
            chunks = [(rank * call.count, call.count) for rank in range(self.ranks)]
            self._gather(call.recv, chunks, self.rank, send, receive)
        else:  # REDUCE_SCATTER
            total = call.count * self.ranks
            work = scratch + self._largest_chunk_bytes(total)
            self._copy(work, call.send, total * self.itemsize)
            chunks = [(rank * call.count, call.count) for rank in range(self.ranks)]
            self._reduce_scatter(work, chunks, scratch, send, receive)
            mine = chunks[self.rank][0] * self.itemsize
            self._copy(call.recv, work + mine, nbytes)
            self._finish_average(call.recv, call.count)

    # the walks

    def _all_reduce(self, buf: int, count: int, scratch: int, send: Move, receive: Move) -> None:
        chunks = self._chunks(count)
        self._reduce_scatter(buf, chunks, scratch, send, receive)
        self._gather(buf, chunks, self.rank, send, receive)
        self._finish_average(buf, count)

    def _reduce_scatter(
        self, buf: int, chunks: list[tuple[int, int]], scratch: int, send: Move, receive: Move
    ) -> None:
        """After it, this rank's chunk ``rank`` holds the reduction of every rank's."""
        n, size = self.ranks, self.itemsize
        for step in range(n - 1):
            out_offset, out_count = chunks[(self.rank - step - 1) % n]
            in_offset, in_count = chunks[(self.rank - step - 2) % n]
            self._step(
                functools.partial(send, buf + out_offset * size, out_count * size),
                functools.partial(receive, scratch, in_count * size),
            )
            self._reduce(buf + in_offset * size, scratch, in_count)

    def _gather(
        self, buf: int, chunks: list[tuple[int, int]], owned: int, send: Move, receive: Move
    ) -> None:
        """Pass chunks around until every rank has all of them (this one owns ``owned``)."""
        n, size = self.ranks, self.itemsize
        for step in range(n - 1):
            out_offset, out_count = chunks[(owned - step) % n]
            in_offset, in_count = chunks[(owned - step - 1) % n]
            self._step(
                functools.partial(send, buf + out_offset * size, out_count * size),
                functools.partial(receive, buf + in_offset * size, in_count * size),
            )

    def _broadcast(self, src: int, dst: int, nbytes: int, send: Move, receive: Move) -> None:
        root, n = self.call.root, self.ranks
        last = (root - 1) % n  # the rank that forwards nothing
        if self.rank == root:
            self._copy(dst, src, nbytes)
        if n == 1:
            return
        forwarding: Future[None] | None = None
        for offset in range(0, nbytes, PIECE):
            piece = min(PIECE, nbytes - offset)
            if self.rank != root:
                receive(dst + offset, piece)
            if forwarding is not None:
                forwarding.result()
                forwarding = None
            if self.rank != last:
                forwarding = _sender.submit(send, dst + offset, piece)
        if forwarding is not None:
            forwarding.result()

    # pieces

    def _step(self, out: Callable[[], None], into: Callable[[], None]) -> None:
        sending = _sender.submit(out)
        try:
            into()
        finally:
            sending.result()

    def _chunks(self, count: int) -> list[tuple[int, int]]:
        """(offset, count) of each rank's share of ``count`` elements."""
        base, extra = divmod(count, self.ranks)
        chunks, offset = [], 0
        for rank in range(self.ranks):
            size = base + (1 if rank < extra else 0)
            chunks.append((offset, size))
            offset += size
        return chunks

    def _largest_chunk_bytes(self, count: int) -> int:
        return max(n for _o, n in self._chunks(count)) * self.itemsize

    def _view(self, ptr: int, count: int) -> Any:
        nbytes = count * self.itemsize
        return self.backend.view(ptr, nbytes, 0, (count,), (self.itemsize,), self.dtype)

    def _copy(self, dst: int, src: int, nbytes: int) -> None:
        if dst != src and nbytes and not self._failed():
            self.backend.copy(dst, src, nbytes, self.stream)

    def _reduce(self, dst: int, src: int, count: int) -> None:
        if not count or self._failed():
            return
        xp = self.backend.array_module()
        with self.backend.on_stream(self.stream):
            target = self._view(dst, count)
            _reducers(xp)[self.call.op](target, self._view(src, count), out=target)

    def _finish_average(self, ptr: int, count: int) -> None:
        if self.call.op != "avg" or not count or self._failed():
            return
        with self.backend.on_stream(self.stream):
            target = self._view(ptr, count)
            if self.dtype.kind in "iub":
                target //= self.ranks
            else:
                target /= self.ranks
