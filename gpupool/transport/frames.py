"""Frames on a stream socket: a fixed header, a serialized message, then raw payload bytes.

The header says what follows: ``kind`` (a protobuf message, or a slot of a shared-memory
ring), the message's length, and how many payload bytes belong to it. The payload itself
travels beside the message (over the session's stripes, or through its ring), never inside
it, so no layer copies it into a protobuf ``bytes`` field.
"""

from __future__ import annotations

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
    """A stream socket (TCP or Unix) that carries frames."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(True)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        self._header = memoryview(bytearray(HEADER.size))

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
        data, fds, _flags, _addr = socket.recv_fds(self.sock, 1, 4)
        if not data:
            raise ConnectionLost("the peer closed the connection")
        for extra in fds[1:]:
            os.close(extra)
        return fds[0] if fds else None

    def receive(
        self, limit: int = MAX_MESSAGE, deadline: float | None = None
    ) -> tuple[int, bytes, int]:
        """The next frame: (kind, message, payload size). ConnectionLost at the end, or for a
        message over ``limit`` bytes (before any room is made for it)."""
        receive_exactly(self.sock, self._header, deadline)
        kind, length, payload = HEADER.unpack(self._header)
        if length > limit:
            raise ConnectionLost(f"frame of {length} bytes: not a gpupool peer")
        message = bytearray(length)
        receive_exactly(self.sock, memoryview(message), deadline)
        return kind, bytes(message), payload

    def receive_with_fds(self) -> tuple[bytes, list[int]]:
        """A message frame sent with :meth:`send_with_fds`, and its descriptors."""
        data, fds, _flags, _addr = socket.recv_fds(self.sock, HEADER.size, 4)
        if not data:
            raise ConnectionLost("the peer closed the connection")
        self._header[: len(data)] = data
        receive_exactly(self.sock, self._header[len(data) :])
        kind, length, _payload = HEADER.unpack(self._header)
        message = bytearray(length)
        receive_exactly(self.sock, memoryview(message))
        if kind != MESSAGE:
            raise ConnectionLost(f"expected a message frame, got kind {kind}")
        return bytes(message), fds

    def close(self) -> None:
        self.sock.close()
