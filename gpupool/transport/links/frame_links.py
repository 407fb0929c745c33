"""``tcp://`` and ``shm://``: frames straight to the session's worker.

The daemon's front reads only the opening frame and hands the connection to the session's
worker, so requests, replies and payloads skip the front's relay hop. Over ``tcp://`` a
large payload is split over ``GPUPOOL_STRIPES`` connections in parallel; over ``shm://``
(client and daemon on one host) it goes through a shared-memory ring that the daemon has
registered with the CUDA driver. Either way the payload is read from, and written into, the
caller's own buffer: the client never holds a second copy of a large transfer.
"""

from __future__ import annotations

import os
import socket
from collections import deque
from collections.abc import Callable
from urllib.parse import urlsplit

from gpupool.errors import ConnectionLost, GpupoolError
from gpupool.proto import gpupool_pb2 as pb
from gpupool.proto.limits import INLINE_LIMIT
from gpupool.transport import host_blocks
from gpupool.transport.failures import translate
from gpupool.transport.frames import DROP, MESSAGE, SHARE, FrameSocket
from gpupool.transport.links import Endpoint, Link
from gpupool.transport.payload import (
    MAX_STRIPES,
    BufferSink,
    BufferSource,
    DiscardSink,
    Ring,
    Source,
    Stripes,
)

ENV_STRIPES = "GPUPOOL_STRIPES"
# Parallel streams need cores to run on: four where there are plenty, fewer on small hosts.
DEFAULT_STRIPES = max(1, min(4, os.cpu_count() or 1))


class FrameLink(Link):
    """A session over frames on one socket; payloads over ``payload`` (stripes or a ring)."""

    inline_limit = INLINE_LIMIT

    def __init__(self, sock: socket.socket) -> None:
        self.frames = FrameSocket(sock)
        self._payload: Stripes | Ring | None = None
        self._payload_size = 0  # of the last reply received

    def send_message(self, message: bytes) -> None:
        try:
            self.frames.send(MESSAGE, message)
        except OSError as exc:
            raise translate(exc, "write", "the daemon") from exc

    def send_copy(self, header: pb.Request, data: memoryview) -> None:
        self.send_payload(header.SerializeToString(), len(data), BufferSource(data))

    def send_payload(self, header: bytes, size: int, source: Source) -> None:
        """Send a serialized message and ``size`` payload bytes read from ``source`` (a
        worker's device, on a peer link)."""
        try:
            self.frames.send(MESSAGE, header, size)
            self._moves().send(size, source)
        except OSError as exc:
            self._abandon()
            raise translate(exc, "write", "the daemon") from exc

    def receive(self) -> pb.Reply:
        try:
            kind, message, self._payload_size = self.frames.receive()
        except OSError as exc:
            raise translate(exc, "read", "the daemon") from exc
        except ConnectionLost:
            raise ConnectionLost("the daemon ended the session") from None
        if kind != MESSAGE:
            raise ConnectionLost(f"unexpected frame of kind {kind}")
        return pb.Reply.FromString(message)

    def receive_data(self, first: pb.Reply, target: memoryview) -> int:
        size, self._payload_size = self._payload_size, 0
        if not size:  # a small read: its data came inside the reply
            if len(first.data) == len(target):
                target[:] = first.data
            return len(first.data)
        sink = BufferSink(target) if size == len(target) else DiscardSink()
        try:
            self._moves().receive(size, sink)
        except OSError as exc:
            raise translate(exc, "read", "the daemon") from exc
        return size

    def close(self, timeout: float) -> None:
        sock = self.frames.sock
        try:
            sock.shutdown(socket.SHUT_WR)  # the worker finishes what was sent, then ends
            sock.settimeout(timeout)
            while sock.recv(1 << 16):
                pass
        except OSError:
            pass
        finally:
            if self._payload is not None:
                self._payload.close()
            sock.close()

    def abort(self) -> None:
        try:
            self.frames.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        if isinstance(self._payload, Stripes):
            self._payload.shutdown()

    def _abandon(self) -> None:
        """Give up a payload sent in part (a stripe broke, the host buffer could not be read):
        the worker, still waiting for the rest, reads the end instead and ends the session,
        so the reply the session then waits for comes (as the connection's end) and no side
        waits for the other."""
        try:
            self.frames.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        if self._payload is not None:
            self._payload.close()

    def _moves(self) -> Stripes | Ring:
        if self._payload is None:
            raise ConnectionLost("payload before the session was open")
        return self._payload


def _attach_stripe(opened: pb.SessionOpened, index: int) -> pb.Request:
    return pb.Request(attach=pb.AttachStripe(key=opened.key, stripe=index))


class TcpLink(FrameLink):
    """``attach`` is the first frame of each further stripe: a session's own (AttachStripe)
    or, on a worker's peer link, an AttachPeer."""

    def __init__(
        self,
        sock: socket.socket,
        address: tuple[str, int],
        stripes: int,
        attach: Callable[[pb.SessionOpened, int], pb.Request] = _attach_stripe,
        staging: Callable[[int], memoryview] | None = None,
    ) -> None:
        super().__init__(sock)
        self._address = address
        self.stripes = stripes
        self._attach = attach
        self._payload = Stripes(self.frames, stripes, *(() if staging is None else (staging,)))

    def opened(self, opened: pb.SessionOpened) -> None:
        assert isinstance(self._payload, Stripes)
        for index in range(1, self.stripes):
            sock = socket.create_connection(self._address)
            FrameSocket(sock).send(MESSAGE, self._attach(opened, index).SerializeToString())
            self._payload.attach(index, sock)

    def send(self, request: pb.Request) -> None:
        if request.HasField("open"):  # the front reads how many connections will follow
            request.open.stripes = self.stripes
        super().send(request)


class ShmLink(FrameLink):
    """A session over a Unix socket; payloads through the worker's ring, or not at all.

    A copy from or to the shim's pinned memory (a shareable :class:`HostBlock`) is named by
    reference: the block's descriptor goes to the worker once, and the worker copies between
    the device and its own mapping of the block. Blocks the client frees are dropped at the
    worker ahead of the link's next message, so a worker holds only what its client still
    has.
    """

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(sock)
        self._shared: set[int] = set()
        self._refused: set[int] = set()  # by the worker (its cap): these go through the ring
        self._freed: deque[int] = deque()  # appended to by collection, from any thread

    def host_ref(self, view: memoryview) -> pb.HostRef | None:
        if len(view) <= self.inline_limit:
            return None  # travels inside its message: as fast, and no block to share
        found = host_blocks.find(view)
        if found is None:
            return None
        block, offset = found
        if block.id in self._refused or (block.id not in self._shared and not self._share(block)):
            return None
        return pb.HostRef(block=block.id, offset=offset)

    def forget(self, block: int) -> None:
        self._freed.append(block)

    # Freed blocks are dropped ahead of the next message (a lone call or a batch), never
    # after one: a read served through the ring has the worker waiting for SLOT frames, and a
    # DROP there would end the session. No queued call names a block (a copy by reference
    # always waits for its reply), so nothing in flight still uses one.

    def send_message(self, message: bytes) -> None:
        self._drop_freed()
        super().send_message(message)

    def send_copy(self, header: pb.Request, data: memoryview) -> None:
        self._drop_freed()
        super().send_copy(header, data)

    def _share(self, block: host_blocks.HostBlock) -> bool:
        """Pass ``block`` to the worker; False if it refused (the copy then uses the ring)."""
        assert block.fd is not None
        message = pb.ShareHost(block=block.id).SerializeToString()
        try:
            self.frames.send_with_fd(SHARE, message, block.fd)
            kind, answer, _size = self.frames.receive()
        except OSError as exc:
            raise translate(exc, "write", "the daemon (sharing host memory)") from exc
        reply = pb.Reply.FromString(answer)
        if kind != SHARE:  # the front's notice that the worker ended
            raise ConnectionLost(f"the daemon ended the session: {reply.error.message}")
        block.shared_with(self)
        if reply.HasField("error"):
            self._refused.add(block.id)
            return False
        self._shared.add(block.id)
        return True

    def _drop_freed(self) -> None:
        dropped = []
        while self._freed:
            block = self._freed.popleft()
            self._refused.discard(block)
            if block in self._shared:
                self._shared.remove(block)
                dropped.append(block)
        if dropped:
            try:
                self.frames.send(DROP, pb.DropHost(blocks=dropped).SerializeToString())
            except OSError as exc:
                raise translate(exc, "write", "the daemon") from exc

    def receive(self) -> pb.Reply:
        if self._payload is not None:
            return super().receive()
        try:  # the reply to 'open' brings the ring the worker made
            message, fds = self.frames.receive_with_fds()
        except OSError as exc:
            raise translate(exc, "read", "the daemon") from exc
        for extra in fds[1:]:
            os.close(extra)
        reply = pb.Reply.FromString(message)
        if fds:
            self._payload = Ring.attach(self.frames, fds[0])
        self.frames.descriptors = False  # the worker sends none after the ring
        return reply


def stripes_wanted() -> int:
    """``GPUPOOL_STRIPES``, checked: the connections a tcp:// link uses."""
    text = os.environ.get(ENV_STRIPES, str(DEFAULT_STRIPES))
    if not text.isdigit() or not 1 <= int(text) <= MAX_STRIPES:
        raise GpupoolError(f"{ENV_STRIPES}={text!r}: a number of connections, 1 to {MAX_STRIPES}")
    return int(text)


def tcp_address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.hostname is None or parts.port is None:
        raise GpupoolError(f"bad tcp endpoint {url!r}")
    return parts.hostname, parts.port


def open_tcp(endpoint: Endpoint, timeout: float) -> Link:
    address = tcp_address(endpoint.url)
    stripes = stripes_wanted()
    sock = socket.create_connection(address, timeout)
    sock.settimeout(None)
    return TcpLink(sock, address, stripes)


def open_shm(endpoint: Endpoint, timeout: float) -> Link:
    """Only on the daemon's own host: elsewhere the path names nothing of the daemon's."""
    parts = urlsplit(endpoint.url)
    if parts.hostname != socket.gethostname().lower():
        raise OSError(f"{endpoint.url} is on another host")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(parts.path)
        sock.settimeout(None)
    except OSError:
        sock.close()
        raise
    return ShmLink(sock)
