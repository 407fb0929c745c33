"""A worker's side of its session's connection: requests in, replies and device data out.

A session reaches its worker either as relayed messages from the front (``grpc://``) or as
a socket of its own that the front handed over (``tcp://``, ``shm://``). The worker's loop
is the same for both; a channel hides which it is.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Protocol

from google.protobuf.message import DecodeError

from gpupool.errors import ConnectionLost, GpupoolError
from gpupool.logs import fields
from gpupool.proto import gpupool_pb2 as pb
from gpupool.proto.limits import INLINE_LIMIT
from gpupool.server.executor import DeviceData, as_replies, error_message
from gpupool.server.host_memory import SharedHostMemory
from gpupool.transport.frames import DROP, MESSAGE, SHARE, FrameSocket
from gpupool.transport.payload import Ring, Sink, Stripes

log = logging.getLogger(__name__)


def decode(raw: bytes) -> pb.Request:
    try:
        return pb.Request.FromString(raw)
    except DecodeError:
        return pb.Request()  # names no call: the executor holds an error for it


class Channel(Protocol):
    host_memory: SharedHostMemory | None  # what the client shared (shm:// sessions)

    def next(self) -> tuple[pb.Request, int] | None:
        """The next request and the size of the payload beside it; None at the session's end."""

    def receive_payload(self, size: int, sink: Sink) -> None: ...

    def send(self, item: pb.Reply | DeviceData) -> None: ...


class RelayChannel:
    """Messages relayed by the front process over the worker's socketpair (``grpc://``)."""

    host_memory: SharedHostMemory | None = None

    def __init__(self, conn: Connection, first: bytes | None = None) -> None:
        self._conn = conn
        self._first = first

    def next(self) -> tuple[pb.Request, int] | None:
        if self._first is not None:
            raw, self._first = self._first, None
            return decode(raw), 0
        try:
            return decode(self._conn.recv_bytes()), 0
        except (EOFError, OSError):
            return None

    def receive_payload(self, size: int, sink: Sink) -> None:
        raise AssertionError("relayed sessions carry payloads in chunks")

    def send(self, item: pb.Reply | DeviceData) -> None:
        for reply in as_replies(item):
            self._conn.send_bytes(reply.SerializeToString())


class FrameChannel:
    """A client connection of the worker's own: frames, with payloads over stripes or a ring."""

    def __init__(
        self,
        sock: socket.socket,
        handover: pb.Handover,
        staging: Callable[[int], memoryview],
        register: Callable[[memoryview], None],
        host_memory: SharedHostMemory | None = None,
    ) -> None:
        """``host_memory`` takes the blocks an shm:// client shares (SHARE, DROP frames)."""
        self.frames = FrameSocket(sock)
        self.host_memory = host_memory
        self._handover = handover
        self._first: bytes | None = handover.first
        self.ring: Ring | None = None
        self._ring_fd: int | None = None
        self._stripes: Stripes | None = None
        if handover.shared_memory:
            self.ring, self._ring_fd = Ring.create(self.frames)
            register(self.ring.view)
        else:
            stripes = max(1, decode(handover.first).open.stripes)
            self._stripes = Stripes(self.frames, stripes, staging)

    def next(self) -> tuple[pb.Request, int] | None:
        if self._first is not None:
            raw, self._first = self._first, None
            return decode(raw), 0
        try:
            kind, message, payload = self.frames.receive()
            while self.host_memory is not None and (kind, payload) in ((SHARE, 1), (DROP, 0)):
                if kind == SHARE:
                    self._share(self.host_memory, message)
                else:
                    self._drop(self.host_memory, message)
                kind, message, payload = self.frames.receive()
        except (ConnectionLost, OSError):
            return None
        if kind != MESSAGE:
            log.warning("unexpected frame", extra=fields(kind=kind))
            return None
        return decode(message), payload

    def receive_payload(self, size: int, sink: Sink) -> None:
        self._payload().receive(size, sink)

    def send(self, item: pb.Reply | DeviceData) -> None:
        if isinstance(item, DeviceData):
            if item.size <= INLINE_LIMIT:  # one reply: INLINE_LIMIT is within a chunk
                self.frames.send(MESSAGE, item.small_reply().SerializeToString())
                return
            self.frames.send(MESSAGE, b"", item.size)
            self._payload().send(item.size, item.source)
            return
        if item.HasField("opened"):
            item.opened.session_id = self._handover.session_id
            item.opened.key = self._handover.key
            if self._ring_fd is not None:  # the client maps the same ring
                self.frames.send_with_fds(item.SerializeToString(), [self._ring_fd])
                os.close(self._ring_fd)  # the mapping stays
                self._ring_fd = None
                return
        self.frames.send(MESSAGE, item.SerializeToString())

    def _share(self, host_memory: SharedHostMemory, message: bytes) -> None:
        """Take the block the client shares (its descriptor is on the frame's payload byte)
        and answer whether it was taken."""
        fd = self.frames.receive_fd()
        try:
            block = pb.ShareHost.FromString(message).block
        except DecodeError:
            block = 0  # refused as no block, and its descriptor closed
        try:
            host_memory.add(block, fd)
            answer = pb.Reply()
        except GpupoolError as exc:
            answer = pb.Reply(error=error_message(exc))
            log.info("host memory refused", extra=fields(detail=answer.error.message))
        self.frames.send(SHARE, answer.SerializeToString())

    def _drop(self, host_memory: SharedHostMemory, message: bytes) -> None:
        try:
            host_memory.drop(pb.DropHost.FromString(message).blocks)
        except DecodeError:
            log.warning("malformed host memory drop")

    def _payload(self) -> Ring | Stripes:
        payload = self.ring or self._stripes
        assert payload is not None
        return payload

    def attach_stripe(self, index: int, sock: socket.socket) -> None:
        if self._stripes is None:
            sock.close()
            return
        try:
            self._stripes.attach(index, sock)
        except ConnectionLost as exc:
            log.warning("stripe refused", extra=fields(reason=str(exc)))


def take_handovers(
    handoffs: socket.socket,
    stripe: Callable[[int, socket.socket], None],
    peer: Callable[[pb.PeerHandover, socket.socket, bool], None],
) -> threading.Thread:
    """Take the connections the front hands over while the session lives, in a thread: the
    session's own stripes (``stripe``) and other workers' peer links (``peer``)."""

    def take() -> None:
        while True:
            try:
                handover, sock = receive_handover(handoffs)
            except (ConnectionLost, OSError):
                return
            if handover.HasField("peer"):
                peer(handover.peer, sock, handover.shared_memory)
            elif handover.stripe:
                stripe(handover.stripe, sock)
            else:
                sock.close()

    thread = threading.Thread(target=take, name="handovers", daemon=True)
    thread.start()
    return thread


def send_handover(handoffs: socket.socket, handover: pb.Handover, sock: socket.socket) -> None:
    """Pass a client connection to a worker (front process side)."""
    socket.send_fds(handoffs, [handover.SerializeToString()], [sock.fileno()])


def receive_handover(handoffs: socket.socket) -> tuple[pb.Handover, socket.socket]:
    """A client connection the front passed (worker side)."""
    message, fds, _flags, _addr = socket.recv_fds(handoffs, 1 << 20, 1)
    if not fds:
        raise ConnectionLost("the front process closed the handover socket")
    return pb.Handover.FromString(message), socket.socket(fileno=fds[0])
