"""A pooled daemon's side of the scheduler: register the node, then send heartbeats.

The node's name is its identity: a daemon that restarts registers again under the same name
and the scheduler keeps its GPUs (and the allocations on them) rather than adding new ones.
Each heartbeat carries the live figures of every device (memory used, utilisation, the
allocation of each open session); the reply lists the allocations whose leases hold, and
the sessions of any other one are ended (:meth:`Admission.sync`). The scheduler holds each
heartbeat's reply for up to an interval and answers as soon as one of the node's
allocations ends, so a released allocation's sessions end at once; and a session opening
asks whether its allocation still holds (:meth:`Registration.allocation_live`). So the
scheduler never needs a connection to the daemon. A scheduler that is away is retried
every interval; meanwhile sessions go on, and open on their grants alone.

Every call carries a fresh proof of the cluster secret over that very message
(:func:`grants.node_proof`): one seen on the wire cannot be sent again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

import grpc

from gpupool import grants, tls
from gpupool.logs import fields
from gpupool.proto import scheduler_pb2 as spb
from gpupool.proto import scheduler_pb2_grpc as spb_grpc
from gpupool.proto.limits import GRPC_OPTIONS
from gpupool.server.admission import Admission
from gpupool.server.backends.base import DeviceInfo
from gpupool.server.counters import BusyShare
from gpupool.server.nvml import Nvml
from gpupool.server.pool import WorkerPool

log = logging.getLogger(__name__)

CALL_TIMEOUT_S = 5.0
CHECK_TIMEOUT_S = 2.0  # the most a session's opening waits to hear whether its lease holds
REFUSALS = (
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.PERMISSION_DENIED,
)


class Registration:
    """The thread that keeps this node registered with the scheduler at ``scheduler``."""

    def __init__(
        self,
        scheduler: str,
        node: spb.NodeRegistration,
        devices: Sequence[DeviceInfo],
        pools: Sequence[WorkerPool],
        admission: Admission,
        secret: bytes,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._node = node
        self._secret = secret
        self._devices = list(devices)
        self._pools = list(pools)
        self._admission = admission
        self._clock = clock
        self._channel = tls.channel(scheduler, GRPC_OPTIONS)
        self._stub = spb_grpc.SchedulerStub(self._channel)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="registration", daemon=True)
        self._nvml = Nvml() if node.backend == "cupy" else None
        self._busy = [BusyShare(pool.counters) for pool in self._pools]  # the emulator's
        self.interval = 1.0
        self.registered = threading.Event()
        self.refused = ""  # why the scheduler last refused to register this node
        self.reachable = False  # did the last registration or heartbeat get an answer?

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._channel.close()  # ends a heartbeat the scheduler holds, at once
        self._thread.join()

    def allocation_live(self, allocation: str) -> bool | None:
        """Whether the scheduler still holds ``allocation`` on this node; None when it cannot
        say (unreachable, or not answering within ``CHECK_TIMEOUT_S``): the grant alone then
        decides, as it does while the scheduler is away."""
        if not self.reachable:
            return None  # no wait on every session's opening while the scheduler is away
        check = spb.AllocationCheck(node=self._node.name, allocation=allocation)
        grants.prove("check", check, self._node.name, self._secret, self._clock())
        try:
            return self._stub.CheckAllocation(check, timeout=CHECK_TIMEOUT_S).live
        except ValueError:  # the channel is closed: the daemon is stopping
            return None
        except grpc.RpcError as exc:
            log.warning(
                "cannot check an allocation with the scheduler; the grant decides",
                extra=fields(allocation=allocation, code=exc.code().name),
            )
            return None

    def _run(self) -> None:
        known, live = False, None
        while not self._stopping.is_set():
            started = time.monotonic()
            try:
                if not known:
                    registration = spb.NodeRegistration()
                    registration.CopyFrom(self._node)
                    grants.prove(
                        "register", registration, self._node.name, self._secret, self._clock()
                    )
                    accepted = self._stub.Register(registration, timeout=CALL_TIMEOUT_S)
                    self.interval = accepted.heartbeat_s or self.interval
                    known = True
                    self.reachable = True  # it answers: sessions opening may ask it
                    self.registered.set()
                    log.info("registered with the scheduler", extra=fields(node=self._node.name))
                asked_at = self._clock()
                reply = self._stub.Heartbeat(
                    self._heartbeat(), timeout=CALL_TIMEOUT_S + self.interval
                )
                if not reply.known:
                    known = False
                    continue
                self._admission.sync(reply.live_allocations, asked_at)
                if not self.reachable:
                    log.info("scheduler reachable again", extra=fields(node=self._node.name))
                self.reachable = True
                ended = live is not None and not set(live) <= set(reply.live_allocations)
                live = list(reply.live_allocations)
                if ended:
                    continue  # answered early, as an allocation ended: listen again at once
            except ValueError:  # gRPC's "closed channel": stop() closed it before the call
                if self._stopping.is_set():
                    return
                raise
            except grpc.RpcError as exc:
                if self._stopping.is_set():
                    return  # the channel closed under the call: stopping, nothing to say
                if exc.code() in REFUSALS:  # it answers, and says no: say why, try again later
                    if self.refused != exc.details():
                        log.error(
                            "the scheduler refuses this node",
                            extra=fields(node=self._node.name, reason=exc.details()),
                        )
                    self.refused = exc.details() or exc.code().name
                else:
                    if self.reachable:
                        log.warning(
                            "scheduler unreachable; sessions go on",
                            extra=fields(code=exc.code().name, node=self._node.name),
                        )
                    self.reachable = False
            self._stopping.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def _heartbeat(self) -> spb.NodeHeartbeat:
        gpus = []
        for index, (device, pool) in enumerate(zip(self._devices, self._pools, strict=True)):
            used, utilization = 0, 0
            if pool.ledger is not None:
                used, utilization = pool.ledger.used(), round(100 * self._busy[index]())
            elif self._nvml is not None:
                used, utilization = self._nvml.figures(device)
            gpus.append(
                spb.GpuFigures(
                    index=index,
                    memory_used=used,
                    utilization=utilization,
                    sessions=self._admission.sessions(index),
                )
            )
        beat = spb.NodeHeartbeat(name=self._node.name, gpus=gpus, wait_s=self.interval)
        grants.prove("heartbeat", beat, self._node.name, self._secret, self._clock())
        return beat


def node_registration(
    name: str,
    address: str,
    backend: str,
    devices: Sequence[DeviceInfo],
    oversubscription: float,
    reserved: int = 0,
) -> spb.NodeRegistration:
    """What the scheduler learns of this node when it registers (each registration adds a
    fresh proof). Each GPU offers its memory less ``reserved`` bytes, which the daemon's warm
    workers hold: shares of the rest fit on the GPU beside them."""
    return spb.NodeRegistration(
        name=name,
        address=address,
        backend=backend,
        oversubscription=oversubscription,
        gpus=[
            spb.GpuInfo(
                index=index, uuid=d.uuid, name=d.name, memory=max(0, d.total_memory - reserved)
            )
            for index, d in enumerate(devices)
        ],
    )
