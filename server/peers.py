"""A worker's links to other workers of its program: peer copies with no byte through the client.

A link carries data one way. The source's worker opens it (``PeerConnect``) with the client's
own :mod:`gpupool.transport.links`: tcp:// frames, striped, to another daemon; shm:// to a
worker of the same daemon, where the payload crosses the destination's shared-memory ring.
The destination daemon's front admits each connection with the destination session's key and
a grant of that session's allocation (``AttachPeer``), and hands it to the destination
worker, which keeps it here (:class:`InboundLinks`) under the link's id until a ``PeerRecv`` or
a collective names it.

A transfer is a ``PeerData`` header and its payload. The client queues the two halves of a
copy (``PeerSend``, ``PeerRecv``) on both sessions in one order for all links, so the workers
meet them in orders that cannot cross; every wait here is bounded all the same.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from gpupool.errors import ConnectionLost, CUDARuntimeError
from gpupool.logs import fields
from gpupool.proto import gpupool_pb2 as pb
from gpupool.transport.frames import MESSAGE, FrameSocket
from gpupool.transport.links import OPENERS, Endpoint
from gpupool.transport.links.frame_links import FrameLink, TcpLink, tcp_address
from gpupool.transport.payload import MAX_STRIPES, Ring, Sink, Source, Stripes

log = logging.getLogger(__name__)

PEER_TIMEOUT_S = 60.0  # how long a worker waits for the other end of a peer transfer
CONNECT_TIMEOUT_S = 10.0
MAX_LINKS = 4096  # inbound links one session keeps
LocalCopy = Callable[[pb.PeerData, int | None], pb.Error | None]


def _timeout(what: str) -> CUDARuntimeError:
    return CUDARuntimeError("cudaErrorTimeout", f"{what}: the peer did not answer in time")


class Inbound:
    """The receiving end of one link: frames on its first connection, payload beside them."""

    def __init__(
        self,
        frames: FrameSocket,
        payload: Stripes | Ring,
        unregister: Callable[[memoryview], None] = lambda view: None,
    ) -> None:
        self.frames = frames
        self.payload = payload
        self._unregister = unregister  # a ring the driver knows is let go of before unmapping

    def receive(
        self, size: int, sink: Sink, discard: Sink, local: LocalCopy | None = None
    ) -> pb.Error | None:
        """Take one transfer of ``size`` bytes into ``sink``; the sender's error instead, if it
        sent one. A transfer of another size is drained into ``discard`` and refused. One
        from the sender's own memory (a worker of this daemon) is copied by ``local``."""
        try:
            kind, message, payload = self.frames.receive(deadline=time.monotonic() + PEER_TIMEOUT_S)
            header = pb.PeerData.FromString(message) if kind == MESSAGE else pb.PeerData()
            if header.region:
                fd = self.frames.receive_fd() if payload == 1 else None
                try:
                    if local is None:
                        raise CUDARuntimeError("cudaErrorInvalidValue", "no peer memory here")
                    return local(header, fd)
                finally:
                    self.frames.send(MESSAGE)  # done: the sender's source may change again
        except TimeoutError:
            raise _timeout("peer receive") from None
        except (ConnectionLost, OSError) as exc:
            raise CUDARuntimeError(
                "cudaErrorPeerAccessUnsupported", f"peer link lost: {exc}"
            ) from exc
        if header.HasField("error"):
            return header.error
        if header.size != size or payload != size:
            self.payload.receive(payload, discard)
            return pb.Error(
                name="cudaErrorInvalidValue",
                message=f"peer sent {payload} bytes where {size} were expected",
            )
        self.payload.receive(size, sink)
        return None

    def close(self) -> None:
        if isinstance(self.payload, Ring):
            self._unregister(self.payload.view)
        self.payload.close()
        self.frames.close()


class InboundLinks:
    """The links other workers opened into this one, by id, as the front hands them over."""

    def __init__(
        self,
        staging: Callable[[int], memoryview],
        register: Callable[[memoryview], None],
        unregister: Callable[[memoryview], None],
    ) -> None:
        self._staging = staging
        self._register = register
        self._unregister = unregister
        self._links: dict[int, Inbound] = {}
        self._pending: dict[int, dict[int, socket.socket]] = {}  # stripes ahead of stripe 0
        self._changed = threading.Condition()

    def add(self, peer: pb.PeerHandover, sock: socket.socket, shared_memory: bool) -> None:
        """A connection of a link, from the handover thread."""
        with self._changed:
            if peer.stripe == 0:
                if peer.link in self._links or len(self._links) >= MAX_LINKS:
                    sock.close()
                    return
                self._links[peer.link] = self._accept(peer, sock, shared_memory)
                for index, extra in self._pending.pop(peer.link, {}).items():
                    self._attach(peer.link, index, extra)
                self._changed.notify_all()
            elif peer.link in self._links:
                self._attach(peer.link, peer.stripe, sock)
            elif len(self._pending) < MAX_LINKS:
                self._pending.setdefault(peer.link, {})[peer.stripe] = sock
            else:
                sock.close()

    def get(self, link: int) -> Inbound:
        with self._changed:
            if not self._changed.wait_for(lambda: link in self._links, PEER_TIMEOUT_S):
                raise _timeout(f"peer link {link:x} was never opened")
            return self._links[link]

    def close(self) -> None:
        with self._changed:
            links, self._links = list(self._links.values()), {}
            pending, self._pending = list(self._pending.values()), {}
        for each in links:
            each.close()
        for socks in pending:
            for sock in socks.values():
                sock.close()

    def _accept(self, peer: pb.PeerHandover, sock: socket.socket, shared_memory: bool) -> Inbound:
        """The link's first connection: answer it (over shm://, with this worker's ring)."""
        frames = FrameSocket(sock)
        opened = pb.Reply(opened=pb.SessionOpened())
        if shared_memory:
            ring, fd = Ring.create(frames)
            self._register(ring.view)
            frames.send_with_fds(opened.SerializeToString(), [fd])
            os.close(fd)
            return Inbound(frames, ring, self._unregister)
        stripes = Stripes(frames, max(1, min(peer.stripes, MAX_STRIPES)), self._staging)
        frames.send(MESSAGE, opened.SerializeToString())
        return Inbound(frames, stripes)

    def _attach(self, link: int, index: int, sock: socket.socket) -> None:
        payload = self._links[link].payload
        if not isinstance(payload, Stripes):
            sock.close()
            return
        try:
            payload.attach(index, sock)
        except ConnectionLost as exc:
            log.warning("peer stripe refused", extra=fields(reason=str(exc)))


class Outbound:
    """The sending end of one link: the client's own frame link, opened by a worker.

    ``local`` for a link to a worker of the same daemon, which can open this worker's memory
    itself (``send_region``); ``regions`` are those it has the memory of already.
    """

    def __init__(self, link: FrameLink, local: bool) -> None:
        self._link = link
        self.local = local
        self.regions: set[int] = set()

    @classmethod
    def open(cls, connect: pb.PeerConnect, staging: Callable[[int], memoryview]) -> Outbound:
        scheme = urlsplit(connect.url).scheme
        if scheme not in ("tcp", "shm") or scheme not in OPENERS:
            raise CUDARuntimeError(
                "cudaErrorPeerAccessUnsupported", f"peer link over {connect.url!r}: tcp or shm only"
            )
        if not 1 <= connect.stripes <= MAX_STRIPES:
            raise CUDARuntimeError(
                "cudaErrorInvalidValue", f"{connect.stripes} stripes: 1 to {MAX_STRIPES}"
            )

        def attach(opened: pb.SessionOpened, stripe: int) -> pb.Request:
            return pb.Request(
                attach_peer=pb.AttachPeer(
                    key=connect.key,
                    token=connect.token,
                    link=connect.link,
                    stripe=stripe,
                    stripes=connect.stripes,
                )
            )

        try:
            if scheme == "tcp":
                address = tcp_address(connect.url)
                sock = socket.create_connection(address, CONNECT_TIMEOUT_S)
                sock.settimeout(PEER_TIMEOUT_S)
                link: FrameLink = TcpLink(sock, address, connect.stripes, attach, staging)
            else:
                opened_link = OPENERS["shm"](Endpoint(connect.url), CONNECT_TIMEOUT_S)
                assert isinstance(opened_link, FrameLink)
                link = opened_link
                link.frames.sock.settimeout(PEER_TIMEOUT_S)
            link.send(attach(pb.SessionOpened(), 0))
            reply = link.receive()
        except (OSError, ConnectionLost) as exc:
            raise CUDARuntimeError(
                "cudaErrorPeerAccessUnsupported", f"cannot open a peer link to {connect.url}: {exc}"
            ) from exc
        if reply.HasField("error"):
            link.close(0)
            raise CUDARuntimeError(reply.error.name, f"peer link refused: {reply.error.message}")
        try:
            link.opened(reply.opened)
        except OSError as exc:
            link.close(0)
            raise CUDARuntimeError(
                "cudaErrorPeerAccessUnsupported", f"cannot attach peer stripes: {exc}"
            ) from exc
        return cls(link, scheme == "shm")

    def send(self, size: int, source: Source) -> None:
        header = pb.PeerData(size=size).SerializeToString()
        self._send(header, size, source)

    def send_region(
        self, region: int, offset: int, size: int, region_size: int, handle: bytes, fd: int | None
    ) -> None:
        """Have the receiver copy ``size`` bytes at ``offset`` of this worker's allocation
        ``region`` itself, and wait until it has."""
        header = pb.PeerData(
            size=size, region=region, offset=offset, region_size=region_size, ipc=handle
        ).SerializeToString()
        frames = self._link.frames
        try:
            if region in self.regions or fd is None:
                frames.send(MESSAGE, header)
            else:
                frames.send_with_fd(MESSAGE, header, fd)
                self.regions.add(region)
            frames.receive(deadline=time.monotonic() + PEER_TIMEOUT_S)  # the receiver is done
        except TimeoutError:
            raise _timeout("peer copy") from None
        except (ConnectionLost, OSError) as exc:
            raise CUDARuntimeError(
                "cudaErrorPeerAccessUnsupported", f"peer link lost: {exc}"
            ) from exc

    def send_error(self, error: pb.Error) -> None:
        self._send(pb.PeerData(error=error).SerializeToString(), 0, None)

    def close(self) -> None:
        self._link.close(1.0)

    def _send(self, header: bytes, size: int, source: Source | None) -> None:
        try:
            if source is None:
                self._link.send_message(header)
            else:
                self._link.send_payload(header, size, source)
        except ConnectionLost as exc:
            raise CUDARuntimeError(
                "cudaErrorPeerAccessUnsupported", f"peer link lost: {exc}"
            ) from exc


class Peers:
    """A session's links, both ways."""

    def __init__(self, inbound: InboundLinks, staging: Callable[[int], memoryview]) -> None:
        self.inbound = inbound
        self._staging = staging
        self._outbound: dict[int, Outbound] = {}

    def connect(self, connect: pb.PeerConnect) -> None:
        if connect.link in self._outbound:
            raise CUDARuntimeError(
                "cudaErrorPeerAccessAlreadyEnabled", f"peer link {connect.link:x} is open"
            )
        if len(self._outbound) >= MAX_LINKS:
            raise CUDARuntimeError("cudaErrorTooManyPeers", f"{MAX_LINKS} peer links are open")
        self._outbound[connect.link] = Outbound.open(connect, self._staging)

    def outbound(self, link: int) -> Outbound:
        found = self._outbound.get(link)
        if found is None:
            raise CUDARuntimeError(
                "cudaErrorPeerAccessNotEnabled", f"peer link {link:x} was never opened"
            )
        return found

    def close(self) -> None:
        for each in self._outbound.values():
            each.close()
        self._outbound.clear()
        self.inbound.close()
