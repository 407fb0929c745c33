"""A pooled daemon's side of the scheduler: register the node, then send heartbeats.

The node's name is its identity: a daemon that restarts registers again under the same name
and the scheduler keeps its GPUs (and the allocations on them) rather than adding new ones.
Each heartbeat carries the live figures of every device (memory used, utilisation, the
allocation of each open session); the reply lists the allocations whose leases hold, and
the sessions of any other one are ended (:meth:`Admission.sync`). So the scheduler never
needs a connection to the daemon. A scheduler that is away is retried every interval;
meanwhile sessions go on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

import grpc

from gpupool import grants
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
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._node = node
        self._devices = list(devices)
        self._pools = list(pools)
        self._admission = admission
        self._clock = clock
        self._channel = grpc.insecure_channel(scheduler, GRPC_OPTIONS)
        self._stub = spb_grpc.SchedulerStub(self._channel)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="registration", daemon=True)
        self._nvml = Nvml() if node.backend == "cupy" else None
        self._busy = [BusyShare(pool.counters) for pool in self._pools]  # the emulator's
        self.interval = 1.0
        self.registered = threading.Event()
        self.refused = ""  # why the scheduler last refused to register this node

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join()
        self._channel.close()

    def _run(self) -> None:
        known, reachable = False, True
        while not self._stopping.is_set():
            try:
                if not known:
                    accepted = self._stub.Register(self._node, timeout=CALL_TIMEOUT_S)
                    self.interval = accepted.heartbeat_s or self.interval
                    known = True
                    self.registered.set()
                    log.info("registered with the scheduler", extra=fields(node=self._node.name))
                asked_at = self._clock()
                reply = self._stub.Heartbeat(self._heartbeat(), timeout=CALL_TIMEOUT_S)
                if reply.known:
                    self._admission.sync(reply.live_allocations, asked_at)
                else:
                    known = False
                    continue
                if not reachable:
                    log.info("scheduler reachable again", extra=fields(node=self._node.name))
                reachable = True
            except grpc.RpcError as exc:
                if exc.code() in REFUSALS:  # it answers, and says no: say why, try again later
                    if self.refused != exc.details():
                        log.error(
                            "the scheduler refuses this node",
                            extra=fields(node=self._node.name, reason=exc.details()),
                        )
                    self.refused = exc.details() or exc.code().name
                else:
                    if reachable:
                        log.warning(
                            "scheduler unreachable; sessions go on",
                            extra=fields(code=exc.code().name, node=self._node.name),
                        )
                    reachable = False
            self._stopping.wait(self.interval)

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
        return spb.NodeHeartbeat(name=self._node.name, gpus=gpus, proof=self._node.proof)


def node_registration(
    name: str,
    address: str,
    backend: str,
    devices: Sequence[DeviceInfo],
    oversubscription: float,
    secret: bytes,
    reserved: int = 0,
) -> spb.NodeRegistration:
    """What the scheduler learns of this node when it registers, with the proof that it
    holds the cluster secret. Each GPU offers its memory less ``reserved`` bytes, which the
    daemon's warm workers hold: shares of the rest fit on the GPU beside them."""
    return spb.NodeRegistration(
        name=name,
        address=address,
        backend=backend,
        oversubscription=oversubscription,
        proof=grants.node_proof(name, secret),
        gpus=[
            spb.GpuInfo(
                index=index, uuid=d.uuid, name=d.name, memory=max(0, d.total_memory - reserved)
            )
            for index, d in enumerate(devices)
        ],
    )
