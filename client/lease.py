"""Allocations from the pool scheduler, held under leases that renew in the background.

A :class:`Lease` is one allocation: its GPUs (daemon, device, quota, grant) in the order the
program sees them as device ordinals. While a process holds it, a thread renews it every
third of its time-to-live, which also brings fresh grants, so a session opened late still
has an unexpired one. If the process dies the renewals stop, the lease runs out, and the
scheduler frees it; the daemons then end its sessions.

``GPUPOOL_ALLOCATION=SCHEDULER/ID`` hands an allocation to a child process: the allocation id
is an unguessable bearer capability, and the child asks the scheduler for its GPUs and
grants (and renews too, while it runs).
"""

from __future__ import annotations

import getpass
import logging
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import grpc

from gpupool import tls
from gpupool.errors import AllocationError, GpupoolError
from gpupool.logs import fields
from gpupool.proto import scheduler_pb2 as spb
from gpupool.proto import scheduler_pb2_grpc as spb_grpc
from gpupool.proto.limits import GRPC_OPTIONS

log = logging.getLogger(__name__)

ENV_ALLOCATION = "GPUPOOL_ALLOCATION"
ENV_SCHEDULER = "GPUPOOL_SCHEDULER"
ENV_TOKEN = "GPUPOOL_TOKEN"
CALL_TIMEOUT_S = 10.0
MAX_WAIT_S = 3600.0  # past the scheduler's bound on waits (scheduler/limits.py)
T = TypeVar("T")


@dataclass(frozen=True)
class Placement:
    """One GPU of an allocation."""

    node: str
    address: str  # the daemon, host:port
    index: int  # the daemon's device index
    name: str
    memory: int  # the quota, bytes
    fraction: float
    grant: str


def scheduler_address(given: str | None = None) -> str:
    """The scheduler named by ``given`` or ``GPUPOOL_SCHEDULER``."""
    address = given or os.environ.get(ENV_SCHEDULER, "")
    if not address:
        raise GpupoolError(f"no scheduler: pass --scheduler HOST:PORT or set {ENV_SCHEDULER}")
    return address


class SchedulerClient:
    """Calls to the scheduler, with its refusals raised as :class:`AllocationError`.

    Each call carries the API token (``token``, else ``GPUPOOL_TOKEN``) where there is one;
    the channel uses TLS where ``GPUPOOL_TLS_CA`` is set (:mod:`gpupool.tls`).
    """

    def __init__(self, address: str, token: str | None = None) -> None:
        self.address = address
        self._channel = tls.channel(address, GRPC_OPTIONS)
        self._stub = spb_grpc.SchedulerStub(self._channel)
        token = token or os.environ.get(ENV_TOKEN, "")
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()

    def allocate(self, request: spb.AllocationRequest) -> spb.Allocation:
        # the scheduler refuses a wait past its bound (or NaN) at once; the deadline must
        # still be a number gRPC takes, so that the refusal is what the caller hears
        wait = request.wait_s if 0 <= request.wait_s <= MAX_WAIT_S else 0.0
        timeout = CALL_TIMEOUT_S + wait
        return self._call(
            lambda: self._stub.Allocate(request, timeout=timeout, metadata=self._metadata)
        )

    def renew(self, allocation_id: str) -> spb.Allocation:
        ref = spb.LeaseRef(id=allocation_id)
        return self._call(
            lambda: self._stub.Renew(ref, timeout=CALL_TIMEOUT_S, metadata=self._metadata)
        )

    def release(self, allocation_id: str) -> None:
        ref = spb.LeaseRef(id=allocation_id)
        self._call(lambda: self._stub.Release(ref, timeout=CALL_TIMEOUT_S, metadata=self._metadata))

    def pool(self) -> spb.PoolState:
        return self._call(
            lambda: self._stub.Pool(
                spb.PoolRequest(), timeout=CALL_TIMEOUT_S, metadata=self._metadata
            )
        )

    def close(self) -> None:
        self._channel.close()

    def _call(self, call: Callable[[], T]) -> T:
        try:
            return call()
        except grpc.RpcError as exc:
            code = exc.code()
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                reason = f"the scheduler at {self.address} does not answer ({code.name})"
                raise AllocationError("UNAVAILABLE", reason) from exc
            raise AllocationError(code.name, exc.details() or code.name) from exc


class Lease:
    """An allocation this process holds; renewed in the background until closed."""

    def __init__(self, client: SchedulerClient, allocation: spb.Allocation) -> None:
        self._client = client
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._on_release: list[Callable[[], None]] = []
        self._released = False
        self._update(allocation)
        self.ttl = allocation.ttl_s
        self._thread = threading.Thread(target=self._renew_forever, name="lease", daemon=True)
        self._thread.start()

    @property
    def scheduler(self) -> str:
        """The scheduler's address."""
        return self._client.address

    @property
    def env_value(self) -> str:
        """``GPUPOOL_ALLOCATION``'s value that hands this allocation to another process."""
        return f"{self._client.address}/{self.id}"

    @property
    def placements(self) -> list[Placement]:
        with self._lock:
            return list(self._placements)

    def renew(self) -> None:
        """Extend the lease now (and take its fresh grants)."""
        self._update(self._client.renew(self.id))

    def on_release(self, callback: Callable[[], None]) -> None:
        """Have ``callback`` run when the lease is released (a context detaches its GPUs)."""
        self._on_release.append(callback)

    def release(self) -> None:
        """Give the GPUs back; the daemons end the sessions on them, and the contexts that
        attached them detach them."""
        if self._released:
            return
        self._released = True
        self.close()
        callbacks, self._on_release = self._on_release, []
        for callback in callbacks:
            callback()
        try:
            self._client.release(self.id)
        except AllocationError as exc:
            if exc.code != "NOT_FOUND":  # already gone is what release wants
                raise
        finally:
            self._client.close()

    def close(self) -> None:
        """Stop renewing, without releasing (the lease runs out unless someone renews it)."""
        self._stopping.set()
        if self._thread is not threading.current_thread():
            self._thread.join()

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def _update(self, allocation: spb.Allocation) -> None:
        with self._lock:
            self.id = allocation.id
            self.expires_at = allocation.expires_at
            self._placements = [
                Placement(g.node, g.address, g.index, g.name, g.memory, g.fraction, g.grant)
                for g in allocation.gpus
            ]

    def _renew_forever(self) -> None:
        while not self._stopping.wait(max(self.ttl / 3, 0.1)):
            try:
                self.renew()
            except AllocationError as exc:
                # the reason in the message itself: a program that configures no logging
                # still shows it (Python's last-resort handler prints the message alone)
                log.warning(f"lease not renewed: {exc.reason}", extra=fields(allocation=self.id))
                if exc.code == "NOT_FOUND":
                    return  # released or expired: nothing left to renew


def allocate(
    scheduler: str,
    count: int,
    fraction: float | None = None,
    memory: int | None = None,
    policy: str = "pack",
    same_node: bool = False,
    ttl: float = 60.0,
    wait: float = 0.0,
) -> Lease:
    """Ask the scheduler at ``scheduler`` for ``count`` GPUs, each ``fraction`` of a GPU or
    ``memory`` bytes (a whole GPU when neither is given).

    Raises :class:`AllocationError` with the scheduler's reason when it cannot fit.
    """
    if fraction is not None and memory is not None:
        raise AllocationError("INVALID_ARGUMENT", "ask for a fraction or a memory size, not both")
    if policy.upper() not in spb.Policy.keys():
        raise AllocationError("INVALID_ARGUMENT", f"unknown policy {policy!r}: pack or spread")
    request = spb.AllocationRequest(
        count=count,
        policy=spb.Policy.Value(policy.upper()),  # type: ignore[arg-type]
        same_node=same_node,
        ttl_s=ttl,
        wait_s=wait,
        owner=f"{getpass.getuser()}@{socket.gethostname()}",
    )
    if memory is not None:
        request.memory = memory
    else:
        request.fraction = 1.0 if fraction is None else fraction
    client = SchedulerClient(scheduler)
    try:
        return Lease(client, client.allocate(request))
    except BaseException:
        client.close()
        raise


def attach(env_value: str) -> Lease:
    """Take up the allocation ``GPUPOOL_ALLOCATION`` names (``SCHEDULER/ID``)."""
    scheduler, _, allocation_id = env_value.rpartition("/")
    if not scheduler or not allocation_id:
        raise GpupoolError(f"{ENV_ALLOCATION}={env_value!r} is not SCHEDULER_HOST:PORT/ID")
    client = SchedulerClient(scheduler)
    try:
        return Lease(client, client.renew(allocation_id))
    except BaseException:
        client.close()
        raise
