"""Moving a copy's bulk bytes: over several sockets at once (stripes), or through shared memory.

A payload goes from a :class:`Source` to a :class:`Sink`. On the client both are the user's own
buffer (no extra copy of a large transfer is ever held); in a worker they are the device, whose
memory the emulator can hand out directly (``direct``/``target``) and a GPU moves through
pinned staging buffers. Staged pieces are pipelined: while one piece crosses the network, the
one before it is copied to (or the one after it from) the device. The same classes run on
both ends, in both directions.
"""

from __future__ import annotations

import mmap
import os
import socket
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from gpupool.errors import ConnectionLost
from gpupool.transport import memcopy, memfd
from gpupool.transport.frames import SLOT, FrameSocket, receive_exactly

MAX_STRIPES = 16  # connections one session may use; a daemon refuses more
STRIPE_MIN = 4 << 20  # smaller payloads travel on the session's own connection only
STRIPE_ALIGN = 64 << 10
STAGE = 4 << 20  # bytes a stripe moves per step when the sink cannot be written directly
ATTACH_TIMEOUT_S = 10.0


class Source(Protocol):
    """Bytes to send: a view of them where the host can read them in place, else copies."""

    def direct(self, offset: int, size: int) -> memoryview | None: ...

    def copy_into(self, offset: int, target: memoryview) -> None: ...


class Sink(Protocol):
    """Where received bytes go: straight into ``target`` when it gives a view, else ``write``."""

    def target(self, offset: int, size: int) -> memoryview | None: ...

    def write(self, offset: int, data: memoryview) -> None: ...


class BufferSource:
    """A host buffer as a source (the client's side of a host-to-device copy)."""

    def __init__(self, buffer: memoryview) -> None:
        self._buffer = buffer

    def direct(self, offset: int, size: int) -> memoryview | None:
        return self._buffer[offset : offset + size]

    def copy_into(self, offset: int, target: memoryview) -> None:
        memcopy.copy(target, self._buffer[offset : offset + len(target)])


class BufferSink:
    """A host buffer as a sink (the client's side of a device-to-host copy)."""

    def __init__(self, buffer: memoryview) -> None:
        self._buffer = buffer

    def target(self, offset: int, size: int) -> memoryview | None:
        return self._buffer[offset : offset + size]

    def write(self, offset: int, data: memoryview) -> None:
        memcopy.copy(self._buffer[offset : offset + len(data)], data)


class DiscardSink:
    """Takes a payload nobody wants (a refused copy still has to be read off the wire)."""

    def target(self, offset: int, size: int) -> memoryview | None:
        return None

    def write(self, offset: int, data: memoryview) -> None:
        pass


def pieces(size: int, step: int, start: int = 0) -> Iterator[tuple[int, int]]:
    """(offset, length) of consecutive pieces of at most ``step`` bytes."""
    for offset in range(start, start + size, step):
        yield offset, min(step, start + size - offset)


def split(size: int, stripes: int) -> list[tuple[int, int]]:
    """The contiguous share of each stripe; both ends compute the same split."""
    if stripes <= 1 or size < STRIPE_MIN:
        return [(0, size)]
    share = -(-size // stripes // STRIPE_ALIGN) * STRIPE_ALIGN
    return [(o, n) for o, n in pieces(size, share)]


class Stripes:
    """A session's payload connections: stripe 0 is its own, the others are attached later.

    A large payload is split into one contiguous share per stripe, and the shares move in
    parallel (sockets release the GIL), so the copy is not bound by one stream's speed.
    """

    def __init__(
        self,
        primary: FrameSocket,
        count: int,
        staging: Callable[[int], memoryview] = lambda n: memoryview(bytearray(n)),
    ) -> None:
        """``primary``: the session's own connection, stripe 0, whose frames and read-ahead
        the payload shares."""
        self.count = count
        self._primary = primary
        self._sockets: dict[int, socket.socket] = {0: primary.sock}
        self._attached = threading.Condition()
        self._staging = staging
        self._local = threading.local()
        self._pool = ThreadPoolExecutor(count - 1, "stripe") if count > 1 else None
        self._copiers = ThreadPoolExecutor(count, "stage")  # device copies beside the network

    def attach(self, index: int, sock: socket.socket) -> None:
        if not 0 < index < self.count:
            sock.close()
            raise ConnectionLost(f"stripe {index} of a session with {self.count}")
        sock.setblocking(True)
        with self._attached:
            self._sockets[index] = sock
            self._attached.notify_all()

    def send(self, size: int, source: Source) -> None:
        self._each(size, lambda sock, offset, n: self._send_share(sock, source, offset, n))

    def receive(self, size: int, sink: Sink) -> None:
        self._each(size, lambda sock, offset, n: self._receive_share(sock, sink, offset, n))

    def _reader(self, sock: socket.socket) -> Callable[[memoryview], None]:
        """How to read a share from ``sock``: stripe 0 through its frames' read-ahead."""
        if sock is self._primary.sock:
            return self._primary.receive_into
        return lambda view: receive_exactly(sock, view)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self._copiers.shutdown(wait=False, cancel_futures=True)
        for sock in list(self._sockets.values())[1:]:
            sock.close()

    def shutdown(self) -> None:
        """Shut every stripe both ways, from any thread: moves blocked on them end."""
        for sock in list(self._sockets.values()):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _each(self, size: int, move: Callable[[socket.socket, int, int], None]) -> None:
        shares = split(size, self.count)
        sockets = [self._socket(index) for index in range(len(shares))]
        if self._pool is None or len(shares) == 1:
            move(sockets[0], *shares[0])
            return
        futures = [
            self._pool.submit(move, sock, *share)
            for sock, share in zip(sockets[1:], shares[1:], strict=True)
        ]
        try:
            move(sockets[0], *shares[0])
        finally:
            for future in futures:
                future.result()

    def _socket(self, index: int) -> socket.socket:
        with self._attached:
            if not self._attached.wait_for(lambda: index in self._sockets, ATTACH_TIMEOUT_S):
                raise ConnectionLost(f"stripe {index} was never attached")
            return self._sockets[index]

    def _stages(self) -> tuple[memoryview, memoryview]:
        """This thread's two staging buffers (one filling while the other drains)."""
        stages: tuple[memoryview, memoryview] | None = getattr(self._local, "stages", None)
        if stages is None:
            stages = self._local.stages = (self._staging(STAGE), self._staging(STAGE))
        return stages

    def _receive_share(self, sock: socket.socket, sink: Sink, offset: int, size: int) -> None:
        read = self._reader(sock)
        direct = sink.target(offset, size)
        if direct is not None:
            read(direct)
            return
        stages, writing = self._stages(), None
        for index, (piece_offset, n) in enumerate(pieces(size, STAGE, offset)):
            stage = stages[index % 2][:n]
            read(stage)  # while the piece before goes to the device
            if writing is not None:
                writing.result()
            writing = self._copiers.submit(sink.write, piece_offset, stage)
        if writing is not None:
            writing.result()

    def _send_share(self, sock: socket.socket, source: Source, offset: int, size: int) -> None:
        direct = source.direct(offset, size)
        if direct is not None:
            sock.sendall(direct)
            return
        stages = self._stages()
        parts = list(pieces(size, STAGE, offset))
        reading = None
        if parts:
            reading = self._copiers.submit(source.copy_into, parts[0][0], stages[0][: parts[0][1]])
        for index, (_piece_offset, n) in enumerate(parts):
            assert reading is not None
            reading.result()
            if index + 1 < len(parts):  # the next piece comes off the device meanwhile
                after, m = parts[index + 1]
                reading = self._copiers.submit(source.copy_into, after, stages[(index + 1) % 2][:m])
            sock.sendall(stages[index % 2][:n])


# Measured on the H100 host with 256 MiB copies from NumPy arrays (4 copy threads a side):
# 4 x 8 MiB moved 16-17 GB/s each way, 4 x 16 MiB 19-23 GB/s; more or larger slots (8 x 16,
# 4 x 32) and smaller ones (8 x 4) were slower. Each slot costs a frame each way and a
# hand-off to the copy threads, so slots must be large, and four keep both ends busy.
RING_SLOTS = 4
RING_SLOT_SIZE = 16 << 20


class Ring:
    """Payloads through shared memory: a ring of slots, with tiny frames saying which is ready.

    The sender fills slot ``i % RING_SLOTS`` and sends a ``SLOT`` frame; the receiver takes
    the bytes and answers with a ``SLOT`` frame of its own, which frees the slot. Up to
    ``RING_SLOTS`` slots are in flight, so filling one overlaps emptying another.
    """

    def __init__(self, frames: FrameSocket, memory: mmap.mmap) -> None:
        self.frames = frames
        self.memory = memory
        self.view = memoryview(memory)
        self.slot_size = len(memory) // RING_SLOTS

    @classmethod
    def create(cls, frames: FrameSocket, slot_size: int = RING_SLOT_SIZE) -> tuple[Ring, int]:
        """A new ring in an anonymous shared file; the descriptor to send the peer."""
        fd = memfd.create("gpupool-ring", slot_size * RING_SLOTS)
        return cls(frames, mmap.mmap(fd, slot_size * RING_SLOTS)), fd

    @classmethod
    def attach(cls, frames: FrameSocket, fd: int) -> Ring:
        """The peer's ring, from the descriptor it sent."""
        try:
            return cls(frames, mmap.mmap(fd, os.fstat(fd).st_size))
        finally:
            os.close(fd)

    def send(self, size: int, source: Source) -> None:
        in_flight = 0
        for index, (offset, n) in enumerate(pieces(size, self.slot_size)):
            if in_flight == RING_SLOTS:
                self._freed()
                in_flight -= 1
            source.copy_into(offset, self._slot(index, n))
            self.frames.send(SLOT, payload=n)
            in_flight += 1
        for _ in range(in_flight):
            self._freed()

    def receive(self, size: int, sink: Sink) -> None:
        for index, (offset, n) in enumerate(pieces(size, self.slot_size)):
            kind, _message, filled = self.frames.receive()
            if kind != SLOT or filled != n:
                raise ConnectionLost(f"expected a {n}-byte ring slot, got kind {kind} ({filled})")
            slot = self._slot(index, n)
            direct = sink.target(offset, n)
            if direct is not None:
                memcopy.copy(direct, slot)
            else:
                sink.write(offset, slot)
            self.frames.send(SLOT, payload=n)

    def close(self) -> None:
        self.view.release()
        try:
            self.memory.close()
        except BufferError:  # a slot's view outlives a copy cut short (in its traceback):
            pass  # the map is unmapped with the last view of it

    def _slot(self, index: int, size: int) -> memoryview:
        start = (index % RING_SLOTS) * self.slot_size
        return self.view[start : start + size]

    def _freed(self) -> None:
        kind, _message, _size = self.frames.receive()
        if kind != SLOT:
            raise ConnectionLost(f"expected a ring slot back, got frame kind {kind}")
