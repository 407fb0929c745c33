"""A session's connection to its worker, by URL scheme: ``grpc://``, ``tcp://``, ``shm://``, ``ucx://``.

Every transport carries the same call contract (``gpupool.proto``) behind :class:`Link`, and
registers an opener for its scheme, as dask/distributed's comm registry does; optional ones
register only where their library imports. A daemon advertises its endpoints fastest first;
:func:`candidates` orders them by :data:`PREFERENCE` (or by ``GPUPOOL_TRANSPORT``).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from gpupool.errors import GpupoolError
from gpupool.proto import gpupool_pb2 as pb
from gpupool.proto.limits import CHUNK_SIZE

if TYPE_CHECKING:
    import grpc

ENV_TRANSPORT = "GPUPOOL_TRANSPORT"
PREFERENCE = ("shm", "ucx", "tcp", "grpc")


class Link(ABC):
    """One session's ordered connection: messages both ways, and copies' bulk bytes.

    Not tied to the client library: a daemon can open one on another daemon (peer copies).
    """

    inline_limit = CHUNK_SIZE  # host-to-device payloads up to this travel inside the message

    def send(self, request: pb.Request) -> None:
        """Send one request; ConnectionLost if the connection is gone."""
        self.send_message(request.SerializeToString())

    @abstractmethod
    def send_message(self, message: bytes) -> None:
        """Send one serialized ``Request`` (a batch the session assembled from queued
        entries, say); ConnectionLost if the connection is gone."""

    @abstractmethod
    def send_copy(self, header: pb.Request, data: memoryview) -> None:
        """Send a host-to-device copy's header and then its payload, ``data``."""

    @abstractmethod
    def receive(self) -> pb.Reply:
        """The next reply; ConnectionLost when the session's connection ends."""

    @abstractmethod
    def receive_data(self, first: pb.Reply, target: memoryview) -> int:
        """Write a device-to-host reply's data into ``target``; the bytes the daemon sent."""

    def host_ref(self, view: memoryview) -> pb.HostRef | None:
        """How the worker can reach host memory ``view`` itself, or None: its bytes travel.

        Only a link to a worker on this host can say (``shm://``, for the shim's pinned
        memory); a copy with a reference moves no payload.
        """
        return None

    def opened(self, opened: pb.SessionOpened) -> None:
        """The session is open: attach whatever else the transport uses."""
        return None

    @abstractmethod
    def close(self, timeout: float) -> None:
        """End the session after what was sent, waiting up to ``timeout`` s for the daemon."""

    @abstractmethod
    def abort(self) -> None:
        """End the connection now, from any thread: a send or receive blocked on it returns
        (raising ConnectionLost), and nothing more goes out. For a daemon found dead or
        stopped; :meth:`close` still releases what the link holds."""


@dataclass(frozen=True)
class Endpoint:
    """Where a daemon can be reached, and the gRPC channel every daemon has (None for a
    worker's peer link, which uses only the frame transports)."""

    url: str
    channel: grpc.Channel | None = None

    @property
    def scheme(self) -> str:
        return urlsplit(self.url).scheme


Opener = Callable[[Endpoint, float], Link]
OPENERS: dict[str, Opener] = {}


def register(scheme: str, opener: Opener) -> None:
    OPENERS[scheme] = opener


def candidates(endpoints: Sequence[str], wanted: str | None = None) -> list[str]:
    """The endpoints this process can try, best first.

    ``wanted`` (else ``GPUPOOL_TRANSPORT``) names one scheme to use and no other.
    """
    wanted = wanted or os.environ.get(ENV_TRANSPORT) or None
    usable = [url for url in endpoints if urlsplit(url).scheme in OPENERS]
    if wanted is not None:
        if wanted not in OPENERS:
            raise GpupoolError(
                f"transport {wanted!r} is not available here (have: {', '.join(sorted(OPENERS))})"
            )
        chosen = [url for url in usable if urlsplit(url).scheme == wanted]
        if not chosen:
            offered = ", ".join(endpoints) or "nothing"
            raise GpupoolError(f"the daemon offers no {wanted}:// endpoint (it offers {offered})")
        return chosen
    rank = {scheme: index for index, scheme in enumerate(PREFERENCE)}
    return sorted(usable, key=lambda url: rank.get(urlsplit(url).scheme, len(rank)))


def _open_grpc(endpoint: Endpoint, timeout: float) -> Link:
    """gRPC's opener, importing gRPC only when used: a worker reaching another worker over
    tcp:// or shm:// has no use for it (and starts faster without)."""
    from gpupool.transport.links import grpc_link

    return grpc_link.open_grpc(endpoint, timeout)


def _register_builtin() -> None:
    from gpupool.transport.links import frame_links

    register("grpc", _open_grpc)
    register("tcp", frame_links.open_tcp)
    register("shm", frame_links.open_shm)
    try:
        from gpupool.transport.links import ucx_link
    except ImportError:  # the optional extra gpupool[ucx] is not installed
        return
    register("ucx", ucx_link.open_ucx)


_register_builtin()
