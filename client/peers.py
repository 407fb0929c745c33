"""Peer copies and rings between the devices of a context: the workers move the data.

The client only asks. For each ordered pair of devices it has the source's worker open a link
to the destination's worker once (``PeerConnect``, queued: a tcp:// link to another daemon,
striped; shm:// to a worker of the same daemon), naming the destination session by its key
and presenting the destination's grant. A copy is then two queued calls, ``PeerSend`` on
the source session and ``PeerRecv`` on the destination, appended under one lock (so every
worker meets the halves of all copies in one order) and sent at once on both sessions, so
that neither worker waits for a queue the program has not sent. No payload byte passes here.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from gpupool.errors import CUDARuntimeError
from gpupool.proto import gpupool_pb2 as pb
from gpupool.transport.links.frame_links import stripes_wanted

if TYPE_CHECKING:
    from gpupool.client.context import Context


class PeerLinks:
    """The links of one context, by (source ordinal, destination ordinal)."""

    def __init__(self, context: Context) -> None:
        self._context = context
        self._links: dict[tuple[int, int], int] = {}
        self._enabled: set[tuple[int, int]] = set()
        self._unreachable: set[tuple[int, int]] = set()  # pairs whose source refused a link
        self.lock = threading.RLock()  # the order in which peer calls are queued

    def reachable(self, src: int, dst: int) -> bool:
        """Whether ``src``'s worker can open a link to ``dst``'s: tried once a pair (a round
        trip, the first time), False where the worker refuses peer links
        (``cudaErrorPeerAccessUnsupported``: a confined emulator worker has no sockets)."""
        with self.lock:
            if (src, dst) in self._links:
                return True
            if (src, dst) in self._unreachable:
                return False
            try:
                self.link(src, dst, wait=True)
            except CUDARuntimeError as exc:
                if exc.name != "cudaErrorPeerAccessUnsupported":
                    raise
                self._unreachable.add((src, dst))
                return False
            return True

    def link(self, src: int, dst: int, wait: bool = False) -> int:
        """The id of the link from ``src``'s worker to ``dst``'s, opened on first use."""
        with self.lock:
            found = self._links.get((src, dst))
            if found is not None:
                return found
            context = self._context
            target = context.device(dst)
            link = secrets.randbits(63) | 1  # unique across the allocation's processes
            self.connect(
                src,
                link,
                target.address,
                context.daemons[target.address].endpoints,
                context.session(dst).key,
                context.grant(dst),
                wait,
            )
            self._links[(src, dst)] = link
            return link

    def connect(
        self,
        src: int,
        link: int,
        address: str,
        endpoints: Sequence[str],
        key: bytes,
        token: str,
        wait: bool = False,
    ) -> None:
        """Have ``src``'s worker open ``link`` to the session ``key`` names on the daemon at
        ``address`` (which may be another process's session: a collective's next rank).

        Queued by default: the worker dials when it reaches the call, ahead of any transfer
        queued after it, and a refusal is reported as an asynchronous error. ``wait`` makes
        it a round trip that raises the refusal here."""
        url, stripes = self.route(self._context.device(src).address, address, endpoints)
        connect = pb.PeerConnect(link=link, url=url, key=key, token=token, stripes=stripes)
        session = self._context.session(src)
        if wait:
            session.call(pb.Request(peer_connect=connect))
        else:
            session.submit(pb.Request(peer_connect=connect))

    def copy(self, dst: int, dst_ptr: int, src: int, src_ptr: int, size: int, stream: int) -> None:
        """Queue a copy of ``size`` bytes between two devices; ``stream`` is a stream of the
        current device (the other end uses its null stream)."""
        if size == 0:
            return
        current = self._context.current_device
        link = self.link(src, dst)
        source, destination = self._context.session(src), self._context.session(dst)
        send = pb.PeerSend(
            link=link, src=src_ptr, size=size, stream=stream if current == src else 0
        )
        receive = pb.PeerRecv(
            link=link, dst=dst_ptr, size=size, stream=stream if current == dst else 0
        )
        with self.lock:
            source.submit(pb.Request(peer_send=send))
            destination.submit(pb.Request(peer_recv=receive))
            source.flush()
            destination.flush()

    def enable(self, device: int, peer: int) -> None:
        """``deviceEnablePeerAccess``: open both links now, so later copies cost no wait."""
        self._check_pair(device, peer)
        with self.lock:
            if (device, peer) in self._enabled:
                raise CUDARuntimeError(
                    "cudaErrorPeerAccessAlreadyEnabled",
                    f"device {device} already has access to device {peer}",
                )
            self.link(device, peer, wait=True)
            self.link(peer, device, wait=True)
            self._enabled.add((device, peer))

    def disable(self, device: int, peer: int) -> None:
        self._check_pair(device, peer)
        with self.lock:
            if (device, peer) not in self._enabled:
                raise CUDARuntimeError(
                    "cudaErrorPeerAccessNotEnabled",
                    f"device {device} has no peer access to device {peer} to disable",
                )
            self._enabled.discard((device, peer))  # copies still go worker to worker

    def _check_pair(self, device: int, peer: int) -> None:
        self._context.device(device)
        self._context.device(peer)
        if device == peer:
            raise CUDARuntimeError(
                "cudaErrorInvalidDevice", f"device {device} cannot be its own peer"
            )

    @staticmethod
    def route(source: str, destination: str, endpoints: Sequence[str]) -> tuple[str, int]:
        """The endpoint of daemon ``destination`` that a worker of daemon ``source`` dials,
        and its stripes: the Unix socket when both are one daemon, else tcp://."""
        by_scheme = {urlsplit(url).scheme: url for url in reversed(endpoints)}
        if source == destination and "shm" in by_scheme:
            return by_scheme["shm"], 1
        if "tcp" in by_scheme:
            return by_scheme["tcp"], stripes_wanted()
        raise CUDARuntimeError(
            "cudaErrorPeerAccessUnsupported",
            f"daemon {destination} offers no tcp:// endpoint for peer links",
        )
