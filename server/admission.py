"""Who may open a session on this daemon, and ending the sessions of leases that ended.

A bare daemon (no scheduler: development, one user) admits every session. A daemon in a
pool admits only a session whose opening request carries a valid, unexpired grant for that
device of this node (:mod:`gpupool.grants`), and passes the grant's limits (memory quota,
compute fraction) to the worker in ``OpenSession.limits``, replacing whatever the client put
there. It keeps the sessions it admitted by allocation, so that when the scheduler's
heartbeat reply no longer lists an allocation (released, or its lease expired) their workers
are ended and their memory goes back to the device. As a session opens it also asks the
scheduler whether the grant's allocation still holds (:meth:`Admission.check_with`), so a
released allocation's grants open nothing even before the next heartbeat; where the
scheduler cannot say (away, or slow), the grant alone decides, as it did before.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from google.protobuf.message import DecodeError

from gpupool import grants
from gpupool.errors import CUDARuntimeError
from gpupool.logs import fields
from gpupool.proto import gpupool_pb2 as pb
from gpupool.server import mps

log = logging.getLogger(__name__)

ENDED_MEMORY_S = 24 * 3600.0  # how long an ended allocation's grants stay refused


@dataclass(frozen=True)
class Admitted:
    """An admitted session: the opening request to pass on, and what its worker needs."""

    request: bytes
    allocation: str = ""
    worker_env: dict[str, str] = field(default_factory=dict)  # non-empty: a fresh worker
    memory: int = 0  # the grant's memory quota, bytes (0: a bare daemon's session)


@dataclass(frozen=True)
class _Open:
    allocation: str
    device: int
    opened_at: float
    end: Callable[[CUDARuntimeError], None]


class Admission:
    """The admission rule of one daemon; ``secret`` None makes it a bare daemon."""

    def __init__(
        self,
        node: str = "",
        secret: bytes | None = None,
        clock: Callable[[], float] = time.time,
        mps_running: Callable[[], bool] = mps.running,
    ) -> None:
        self.node = node
        self._secret = secret
        self._clock = clock
        self._mps_running = mps_running
        self._lock = threading.Lock()
        self._open: dict[int, _Open] = {}
        self._keys = itertools.count()
        self._live: set[str] = set()
        self._ended: dict[str, float] = {}  # allocation id -> when this daemon learned it
        self._check: Callable[[str], bool | None] = lambda allocation: None

    def check_with(self, check: Callable[[str], bool | None]) -> None:
        """Ask ``check`` at each opening whether the grant's allocation still holds: False
        refuses the session (and ends the allocation's open ones), None leaves it to the
        grant (the scheduler cannot say)."""
        self._check = check

    def admit(self, first: bytes, device: int) -> Admitted:
        """Check a session's opening request; raises cudaErrorNotPermitted naming why not."""
        if self._secret is None:
            return Admitted(first)
        try:
            request = pb.Request.FromString(first)
        except DecodeError:
            request = pb.Request()
        grant = grants.verify(request.open.token, self._secret, self.node, device, self._clock())
        with self._lock:
            if grant.allocation in self._ended:
                raise lease_ended(grant.allocation)
        if self._check(grant.allocation) is False:
            self._end_allocation(grant.allocation)
            raise lease_ended(grant.allocation)
        request.open.limits.CopyFrom(
            pb.SessionLimits(
                allocation=grant.allocation, memory=grant.memory, fraction=grant.fraction
            )
        )
        env = {}
        if grant.fraction < 1 and self._mps_running():
            env = mps.worker_env(grant.fraction)
        return Admitted(request.SerializeToString(), grant.allocation, env, grant.memory)

    def admit_peer(self, token: str, device: int, allocation: str) -> None:
        """Check a peer link into a session of ``allocation`` on ``device``: its grant must be
        for that device and that allocation (any link, on a bare daemon)."""
        if self._secret is None:
            return
        grant = grants.verify(token, self._secret, self.node, device, self._clock())
        if grant.allocation != allocation:
            raise CUDARuntimeError(
                "cudaErrorNotPermitted",
                f"a grant of allocation {grant.allocation} cannot reach a session of another",
            )
        with self._lock:
            if grant.allocation in self._ended:
                raise lease_ended(grant.allocation)

    def watch(
        self, admitted: Admitted, device: int, end: Callable[[CUDARuntimeError], None]
    ) -> Callable[[], None]:
        """Keep an open session, to be ended by ``end`` (given the error that tells the client
        why) when its lease ends; returns the callable that forgets it (when it closes)."""
        key = next(self._keys)
        with self._lock:
            self._open[key] = _Open(admitted.allocation, device, self._clock(), end)
        return lambda: self._forget(key)

    def sessions(self, device: int) -> list[str]:
        """The allocation of each open session of ``device`` ("" for one without)."""
        with self._lock:
            return [each.allocation for each in self._open.values() if each.device == device]

    def sync(self, live: Iterable[str], asked_at: float) -> None:
        """Take the scheduler's list of live allocations, as of a heartbeat sent at
        ``asked_at``: end the sessions of every other allocation opened before then.

        A session opened after the heartbeat left may hold a grant newer than the list.
        """
        live = set(live)
        now = self._clock()
        with self._lock:
            for allocation in self._live - live:
                self._ended[allocation] = now
            self._live = live
            doomed = [
                self._open.pop(key)
                for key, each in list(self._open.items())
                if each.allocation and each.allocation not in live and each.opened_at < asked_at
            ]
            for allocation in {each.allocation for each in doomed}:
                self._ended.setdefault(allocation, now)
            for allocation, since in list(self._ended.items()):
                if now - since > ENDED_MEMORY_S:
                    del self._ended[allocation]
        for each in doomed:
            log.info(
                "lease ended: ending its session",
                extra=fields(allocation=each.allocation, device=each.device),
            )
            each.end(lease_ended(each.allocation))

    def _end_allocation(self, allocation: str) -> None:
        """The scheduler says ``allocation`` has ended: refuse its grants, end its sessions."""
        with self._lock:
            self._ended.setdefault(allocation, self._clock())
            self._live.discard(allocation)
            doomed = [
                self._open.pop(key)
                for key, each in list(self._open.items())
                if each.allocation == allocation
            ]
        for each in doomed:
            each.end(lease_ended(allocation))

    def _forget(self, key: int) -> None:
        with self._lock:
            self._open.pop(key, None)


def lease_ended(allocation: str) -> CUDARuntimeError:
    """What a session of ``allocation`` is told once its lease has ended, and what a later
    session with one of its grants is refused with."""
    return CUDARuntimeError(
        grants.REFUSED,
        f"allocation {allocation} was released or has expired: its sessions are ended",
    )
