"""Communicators: collectives and point-to-point transfers between the workers of their ranks.

A communicator is a ring of ranks, each one device (of this process, or of another process of
the same allocation). The client never moves a payload: it queues one ``Collective`` call on
each of its own ranks' sessions, naming the link to the next rank and the one from the
previous, and the workers walk the ring themselves (``server/collectives.py``) on the call's
stream. Link ids follow from the communicator's nonce and the two ranks, so both ends know
them without another exchange; a rank opens its link to the next rank when it joins.

Calls between ``group_start`` and ``group_end`` stay queued until the group ends, as NCCL's
grouped calls do; any other call is sent at once, so every rank works while the program
goes on to the next.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from gpupool.client import addressing, context
from gpupool.client.session import Session
from gpupool.errors import CUDARuntimeError
from gpupool.proto import gpupool_pb2 as pb

Kind = pb.Collective.Kind
ALL_REDUCE, REDUCE, BROADCAST = (
    pb.Collective.ALL_REDUCE,
    pb.Collective.REDUCE,
    pb.Collective.BROADCAST,
)
ALL_GATHER, REDUCE_SCATTER = pb.Collective.ALL_GATHER, pb.Collective.REDUCE_SCATTER
OPS = ("sum", "prod", "max", "min", "avg")


@dataclass(frozen=True)
class Member:
    """How a rank's worker is reached: its daemon, that daemon's endpoints, its session."""

    address: str
    endpoints: tuple[str, ...]
    key: bytes
    token: str

    def to_json(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "endpoints": list(self.endpoints),
            "key": self.key.hex(),
            "token": self.token,
        }

    @classmethod
    def from_json(cls, entry: dict[str, Any]) -> Member:
        return cls(
            str(entry["address"]),
            tuple(str(url) for url in entry["endpoints"]),
            bytes.fromhex(str(entry["key"])),
            str(entry["token"]),
        )


def member(ordinal: int) -> Member:
    """This process's device ``ordinal`` as a rank (its session opened now)."""
    ctx = context.current()
    device = ctx.device(ordinal)
    return Member(
        device.address,
        tuple(ctx.daemons[device.address].endpoints),
        ctx.session(ordinal).key,
        ctx.grant(ordinal),
    )


def link_id(nonce: str, src: int, dst: int) -> int:
    digest = hashlib.sha256(f"{nonce}/{src}/{dst}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1 | 1


class _Groups(threading.local):
    depth = 0
    pending: list[Session]

    def __init__(self) -> None:
        self.pending = []


_groups = _Groups()


def group_depth() -> int:
    return _groups.depth


def group_start() -> None:
    _groups.depth += 1


def group_end() -> None:
    if _groups.depth == 0:
        raise CUDARuntimeError("cudaErrorInvalidValue", "groupEnd without groupStart")
    _groups.depth -= 1
    if _groups.depth == 0:
        pending, _groups.pending = _groups.pending, []
        for session in dict.fromkeys(pending):
            session.flush()


class Communicator:
    """One rank of a communicator, on this process's device ``ordinal``."""

    def __init__(self, nonce: str, rank: int, members: list[Member], ordinal: int) -> None:
        if not 0 <= rank < len(members):
            raise CUDARuntimeError("cudaErrorInvalidValue", f"rank {rank} of {len(members)}")
        self.nonce = nonce
        self.rank = rank
        self.members = members
        self.ordinal = ordinal
        self._opened: set[int] = set()
        if len(members) > 1:
            self._outbound((rank + 1) % len(members))

    @property
    def ranks(self) -> int:
        return len(self.members)

    def collective(
        self,
        kind: Kind,
        send: int,
        recv: int,
        count: int,
        dtype: np.dtype,
        op: str = "sum",
        root: int = 0,
        stream: int = 0,
    ) -> None:
        if not 0 <= root < self.ranks:
            raise CUDARuntimeError("cudaErrorInvalidValue", f"root {root} of {self.ranks} ranks")
        n = self.ranks
        call = pb.Collective(
            kind=kind,
            send=self._raw(send),
            recv=self._raw(recv),
            count=count,
            dtype=dtype.str,
            op=op,
            rank=self.rank,
            ranks=n,
            root=root,
            next=link_id(self.nonce, self.rank, (self.rank + 1) % n) if n > 1 else 0,
            prev=link_id(self.nonce, (self.rank - 1) % n, self.rank) if n > 1 else 0,
            stream=stream,
        )
        self._queue(pb.Request(collective=call))

    def send(self, ptr: int, size: int, peer: int, stream: int = 0) -> None:
        link = self._outbound(peer)
        self._queue(
            pb.Request(
                peer_send=pb.PeerSend(link=link, src=self._raw(ptr), size=size, stream=stream)
            )
        )

    def recv(self, ptr: int, size: int, peer: int, stream: int = 0) -> None:
        self._check_peer(peer)
        link = link_id(self.nonce, peer, self.rank)
        self._queue(
            pb.Request(
                peer_recv=pb.PeerRecv(link=link, dst=self._raw(ptr), size=size, stream=stream)
            )
        )

    def _outbound(self, peer: int) -> int:
        """The link to ``peer``, opened (queued ahead of its first use) the first time."""
        self._check_peer(peer)
        link = link_id(self.nonce, self.rank, peer)
        if link not in self._opened:
            target = self.members[peer]
            ctx = context.current()
            ctx.peers.connect(
                self.ordinal, link, target.address, target.endpoints, target.key, target.token
            )
            self._opened.add(link)
        return link

    def _check_peer(self, peer: int) -> None:
        if not 0 <= peer < self.ranks or peer == self.rank:
            raise CUDARuntimeError(
                "cudaErrorInvalidValue", f"peer {peer} of rank {self.rank} ({self.ranks} ranks)"
            )

    def _raw(self, ptr: int) -> int:
        device = addressing.device_of(ptr, self.ordinal)
        if device != self.ordinal:
            raise CUDARuntimeError(
                "cudaErrorInvalidValue",
                f"buffer 0x{ptr:x} is on device {device}, the communicator's rank is on"
                f" device {self.ordinal}",
            )
        return addressing.raw(ptr)

    def _queue(self, request: pb.Request) -> None:
        session = context.current().session(self.ordinal)
        with context.current().peers.lock:
            session.submit(request)
        if _groups.depth:
            _groups.pending.append(session)
        else:
            session.flush()
