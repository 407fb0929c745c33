"""Frames on a stream socket: a fixed header, a serialized message, then raw payload bytes.

The header says what follows: ``kind`` (a protobuf message, or a slot of a shared-memory
ring), the message's length, and how many payload bytes belong to it. The payload itself
travels beside the message (over the session's stripes, or through its ring), never inside
it, so no layer copies it into a protobuf ``bytes`` field.

A frame costs one ``recv`` at each end, not one for its header and one for its message: the
receiving side reads ahead into a buffer and takes frames out of it. What else travels on
the same socket is taken from that buffer first: a payload on the session's own connection
(:meth:`FrameSocket.receive_into`), and, on a Unix socket, the byte a descriptor rides on,
whose descriptor the read-ahead keeps (``recvmsg`` with room for descriptors: the kernel
ends a read at a byte that carries any, so each arrives with its own byte, the read's last).
A socket handed to another process after its first frame (the daemon's front) is read
without read-ahead, so that nothing meant for the next reader stays behind. A reader that
expects no more descriptors sets ``descriptors`` off: a plain ``recv`` costs less (and the
kernel closes any descriptor that still comes).
"""

from __future__ import annotations

import array
import os
import socket
import struct
import time
from collections.abc import Sequence

from gpupool.errors import ConnectionLost
from gpupool.proto.limits import MESSAGE_LIMIT

HEADER = struct.Struct("<BIQ")  # kind, message bytes, payload bytes
MESSAGE = 0  # a Request or Reply; its payload (if any) follows on the payload path
SLOT = 1  # a shared-memory ring slot is full (sender) or free again (receiver)
SHARE = 2  # shm://: a block of host memory, its descriptor on the one payload byte; answered
DROP = 3  # shm://: host memory blocks the client freed
MAX_MESSAGE = MESSAGE_LIMIT  # the same bound as gRPC messages
READ_AHEAD = 64 << 10  # bytes a receiving end reads at once
MAX_FDS = 4  # descriptors one read takes (more are closed: no frame carries more)
_FD_SPACE = socket.CMSG_SPACE(MAX_FDS * array.array("i").itemsize)


def receive_exactly(sock: socket.socket, view: memoryview, deadline: float | None = None) -> None:
    """Fill ``view`` from ``sock``; ConnectionLost if the peer closes first.

    With a ``deadline`` (``time.monotonic()``), TimeoutError once it passes: a timeout on the
    socket alone bounds each ``recv``, and a peer sending a byte at a time never meets it.
    """
    while view:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the peer was too slow")
            sock.settimeout(left)
        got = sock.recv_into(view)
        if not got:
            raise ConnectionLost("the peer closed the connection")
        view = view[got:]


class FrameSocket:
    """A stream socket (TCP or Unix) that carries frames.

    ``read_ahead=False``: every read takes exactly the bytes asked for (the front, which
    hands the socket on after the opening frame)."""

    def __init__(self, sock: socket.socket, read_ahead: bool = True) -> None:
        sock.setblocking(True)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        # reads ask for descriptors (a Unix socket's, until its owner expects no more)
        self.descriptors = sock.family == socket.AF_UNIX
        self._buffer = bytearray(READ_AHEAD if read_ahead else HEADER.size)
        self._view = memoryview(self._buffer)
        self._read_ahead = read_ahead
        self._start = self._end = 0  # the unread bytes: buffer[start:end]
        self._position = 0  # bytes of the stream taken out so far
        self._fds: list[tuple[int, list[int]]] = []  # (stream position just after their byte, fds)

    def send(self, kind: int, message: bytes = b"", payload: int = 0) -> None:
        self.sock.sendall(HEADER.pack(kind, len(message), payload) + message)

    def send_with_fds(self, message: bytes, fds: Sequence[int]) -> None:
        """A message frame that carries file descriptors (Unix sockets only)."""
        frame = HEADER.pack(MESSAGE, len(message), 0) + message
        sent = socket.send_fds(self.sock, [frame], list(fds))
        if sent < len(frame):
            self.sock.sendall(frame[sent:])

    def send_with_fd(self, kind: int, message: bytes, fd: int) -> None:
        """A frame whose one payload byte carries ``fd`` (Unix sockets only).

        The descriptor rides on the payload rather than the header so that the peer reads
        headers with a plain ``recv`` and asks for descriptors only where a frame has one.
        """
        self.sock.sendall(HEADER.pack(kind, len(message), 1) + message)
        socket.send_fds(self.sock, [b"\0"], [fd])

    def receive_fd(self) -> int | None:
        """The descriptor on a frame's one payload byte (after :meth:`receive`); None if the
        byte carried none. Descriptors past the first are closed."""
        self.receive_into(memoryview(bytearray(1)))
        fds = self._claim_fds()
        for extra in fds[1:]:
            os.close(extra)
        return fds[0] if fds else None

    def receive(
        self, limit: int = MAX_MESSAGE, deadline: float | None = None
    ) -> tuple[int, bytes, int]:
        """The next frame: (kind, message, payload size). ConnectionLost at the end, or for a
        message over ``limit`` bytes (before any room is made for it)."""
        self._close_unclaimed()
        self._fill(HEADER.size, deadline)
        kind, length, payload = HEADER.unpack_from(self._buffer, self._start)
        self._take(HEADER.size)
        if length > limit:
            raise ConnectionLost(f"frame of {length} bytes: not a gpupool peer")
        if self._end - self._start >= length:  # the common case: it came with its header
            message = bytes(self._view[self._start : self._start + length])
            self._take(length)
            return kind, message, payload
        whole = bytearray(length)
        self.receive_into(memoryview(whole), deadline)
        return kind, bytes(whole), payload

    def receive_into(self, view: memoryview, deadline: float | None = None) -> None:
        """Fill ``view`` with the next bytes of the stream (a payload on this connection):
        what was read ahead first, then straight from the socket, reading no further."""
        buffered = min(self._end - self._start, len(view))
        if buffered:
            view[:buffered] = self._view[self._start : self._start + buffered]
            self._take(buffered)
        rest = view[buffered:]
        while rest:
            got = self._recv(rest, deadline)
            self._position += got
            rest = rest[got:]

    def receive_with_fds(self) -> tuple[bytes, list[int]]:
        """A message frame sent with :meth:`send_with_fds`, and its descriptors."""
        kind, message, _payload = self.receive()
        fds = self._claim_fds()
        if kind != MESSAGE:
            for fd in fds:
                os.close(fd)
            raise ConnectionLost(f"expected a message frame, got kind {kind}")
        return message, fds

    def close(self) -> None:
        self.sock.close()
        for _at, fds in self._fds:
            for fd in fds:
                os.close(fd)
        self._fds = []

    # reading

    def _take(self, size: int) -> None:
        self._start += size
        self._position += size

    def _fill(self, size: int, deadline: float | None) -> None:
        """At least ``size`` unread bytes in the buffer (``size`` fits the buffer)."""
        if self._end - self._start >= size:
            return
        if self._start:  # keep the unread bytes at the front, to read more behind them
            unread = self._end - self._start
            self._view[:unread] = self._view[self._start : self._end]
            self._start, self._end = 0, unread
        room = len(self._buffer) if self._read_ahead else size
        while self._end < size:
            self._end += self._recv(self._view[self._end : room], deadline)

    def _recv(self, view: memoryview, deadline: float | None) -> int:
        """One read into ``view``: at least a byte, ConnectionLost at the end."""
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the peer was too slow")
            self.sock.settimeout(left)
        if self.descriptors:
            got, ancillary, _flags, _address = self.sock.recvmsg_into([view], _FD_SPACE)
            fds = _descriptors(ancillary)
            if fds:  # they ride on the read's last byte
                self._fds.append((self._position + (self._end - self._start) + got, fds))
        else:
            got = self.sock.recv_into(view)
        if not got:
            raise ConnectionLost("the peer closed the connection")
        return got

    def _claim_fds(self) -> list[int]:
        """The descriptors that came with the bytes taken so far."""
        claimed = [fd for at, fds in self._fds if at <= self._position for fd in fds]
        self._fds = [(at, fds) for at, fds in self._fds if at > self._position]
        return claimed

    def _close_unclaimed(self) -> None:
        """Close the descriptors of bytes already taken that nobody asked for (a peer sent
        them with an ordinary frame)."""
        if self._fds:
            for fd in self._claim_fds():
                os.close(fd)


def _descriptors(ancillary: list[tuple[int, int, bytes]]) -> list[int]:
    fds = array.array("i")
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - (len(data) % fds.itemsize)])
    return list(fds)
