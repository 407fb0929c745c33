"""The scheduler's async shell: gRPC in, the state machine's decisions out, SQLite underneath.

Everything runs on one asyncio loop, so the state machine is never entered twice at once.
Each call becomes an event with the time it arrived; the instructions that come back are
carried out in order: rows stored, then replies sent, so no allocation is announced before
it is on disk. A clock task sends ``Tick`` events: leases expire, silent nodes go down and
waiting requests time out without anyone asking. Grants are signed here, at the boundary,
where the proto messages are made.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

import grpc

from gpupool import grants
from gpupool.addresses import ListenHosts, join_host_port
from gpupool.errors import AllocationError
from gpupool.logs import fields
from gpupool.metrics_http import MetricsServer, serve_metrics
from gpupool.proto import scheduler_pb2 as spb
from gpupool.proto import scheduler_pb2_grpc as spb_grpc
from gpupool.proto.limits import SERVER_OPTIONS
from gpupool.scheduler import state as sm
from gpupool.scheduler.metrics import SchedulerMetrics, on_loop
from gpupool.scheduler.store import Store

log = logging.getLogger(__name__)

TICK_S = 0.25
NOT_A_MEMBER = (
    "the node's proof does not match this scheduler's cluster secret: give the daemon the"
    " scheduler's (GPUPOOL_CLUSTER_SECRET or --secret-file)"
)


class SchedulerService(spb_grpc.SchedulerServicer):
    """The ``Scheduler`` service over one state machine and its store."""

    def __init__(
        self,
        machine: sm.SchedulerState,
        store: Store,
        secret: bytes,
        heartbeat_s: float,
        clock: Callable[[], float] = time.time,
        metrics: SchedulerMetrics | None = None,
    ) -> None:
        self._machine = machine
        self.metrics = metrics or SchedulerMetrics(machine)
        self._store = store
        self._secret = secret
        self._heartbeat_s = heartbeat_s
        self._clock = clock
        self._asks = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[object]] = {}

    # the calls

    async def Register(
        self, request: spb.NodeRegistration, context: grpc.aio.ServicerContext
    ) -> spb.NodeAccepted:
        node = sm.Node(
            name=request.name,
            address=request.address,
            gpus=tuple(sm.Gpu(g.index, g.uuid, g.name, g.memory) for g in request.gpus),
            oversubscription=request.oversubscription or 1.0,
            backend=request.backend,
        )
        now = self._clock()
        if not grants.check_node_proof(request.name, request.proof, self._secret):
            log.warning(
                "registration refused",
                extra=fields(node=request.name, address=request.address, reason="no proof"),
            )
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, NOT_A_MEMBER)
        problem = sm.invalid_node(node)
        if problem is not None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        taken = self._machine.name_taken(node, now)
        if taken is not None:
            log.warning("registration refused", extra=fields(node=node.name, reason=taken))
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, taken)
        self.apply(sm.Register(node, now))
        log.info("node registered", extra=fields(node=node.name, gpus=len(node.gpus)))
        return spb.NodeAccepted(heartbeat_s=self._heartbeat_s)

    async def Heartbeat(
        self, request: spb.NodeHeartbeat, context: grpc.aio.ServicerContext
    ) -> spb.HeartbeatReply:
        if not grants.check_node_proof(request.name, request.proof, self._secret):
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, NOT_A_MEMBER)
        figures = {
            g.index: sm.GpuFigures(g.memory_used, g.utilization, tuple(g.sessions))
            for g in request.gpus
        }
        live = await self._ask(lambda ask: sm.Heartbeat(ask, request.name, figures, self._clock()))
        if live is None:
            return spb.HeartbeatReply(known=False)
        assert isinstance(live, list)
        return spb.HeartbeatReply(known=True, live_allocations=live)

    async def Allocate(
        self, request: spb.AllocationRequest, context: grpc.aio.ServicerContext
    ) -> spb.Allocation:
        share = request.WhichOneof("share")
        ask = sm.Request(
            count=request.count,
            fraction=request.fraction if share == "fraction" else None,
            memory=request.memory if share == "memory" else None,
            policy=_policy_name(request.policy),
            same_node=request.same_node,
            ttl=request.ttl_s,
            wait=request.wait_s,
            owner=request.owner,
        )
        allocation_id = secrets.token_hex(16)  # a bearer capability: unguessable
        allocation = await self._ask(
            lambda n: sm.Allocate(n, ask, allocation_id, self._clock()), context
        )
        assert isinstance(allocation, sm.Allocation)
        log.info(
            "allocated",
            extra=fields(allocation=allocation.id, owner=ask.owner, gpus=len(allocation.slices)),
        )
        return self._message(allocation, with_grants=True)

    async def Renew(
        self, request: spb.LeaseRef, context: grpc.aio.ServicerContext
    ) -> spb.Allocation:
        allocation = await self._ask(lambda n: sm.Renew(n, request.id, self._clock()), context)
        assert isinstance(allocation, sm.Allocation)
        return self._message(allocation, with_grants=True)

    async def Release(
        self, request: spb.LeaseRef, context: grpc.aio.ServicerContext
    ) -> spb.Released:
        await self._ask(lambda n: sm.Release(n, request.id, self._clock()), context)
        return spb.Released()

    async def Pool(
        self, request: spb.PoolRequest, context: grpc.aio.ServicerContext
    ) -> spb.PoolState:
        machine = self._machine
        gpus = []
        for node in machine.nodes.values():
            for gpu in node.gpus:
                figures = node.figures.get(gpu.index, sm.GpuFigures())
                holders = [
                    public_id(a.id)
                    for a in machine.allocations.values()
                    if any((p.node, p.index) == (node.name, gpu.index) for p in a.slices)
                ]
                used = machine.used_units(node.name, gpu.index)
                gpus.append(
                    spb.PoolGpu(
                        node=node.name,
                        index=gpu.index,
                        name=gpu.name,
                        memory=gpu.memory,
                        memory_used=figures.memory_used,
                        fraction_free=max(0, node.capacity - used) / sm.UNITS,
                        utilization=figures.utilization,
                        up=node.up,
                        allocations=holders,
                        sessions=[public_id(allocation) for allocation in figures.sessions],
                        address=node.address,
                    )
                )
        allocations = [self._message(a, with_grants=False) for a in machine.allocations.values()]
        for allocation in allocations:
            allocation.id = public_id(allocation.id)
        return spb.PoolState(gpus=gpus, allocations=allocations)

    # the machine

    def apply(self, event: sm.Event) -> None:
        """Feed ``event`` to the machine and carry out its instructions."""
        instructions = self._machine.handle(event)
        self.metrics.observe(event, instructions)
        for instruction in instructions:
            if isinstance(instruction, sm.StoreNode):
                self._store.save_node(instruction.node)
            elif isinstance(instruction, sm.StoreAllocation):
                self._store.save_allocation(instruction.allocation)
            elif isinstance(instruction, sm.DeleteAllocation):
                self._store.delete_allocation(instruction.allocation_id)
                log.info(
                    f"allocation {instruction.why}",
                    extra=fields(allocation=instruction.allocation_id),
                )
            elif isinstance(instruction, sm.NodeDown):
                log.warning(
                    "node down",
                    extra=fields(node=instruction.name, silent_s=round(instruction.silent_s, 1)),
                )
            elif isinstance(instruction, sm.Reply | sm.Refuse):
                self._answer(instruction)

    async def tick_forever(self, interval: float = TICK_S) -> None:
        while True:
            self.apply(sm.Tick(self._clock()))
            await asyncio.sleep(interval)

    async def _ask(
        self,
        event: Callable[[int], sm.Event],
        context: grpc.aio.ServicerContext | None = None,
    ) -> object:
        """Apply the event made with a fresh ask number and wait for the machine's answer."""
        ask = next(self._asks)
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self._waiting[ask] = future
        made = event(ask)
        self.apply(made)
        try:
            return await future
        except asyncio.CancelledError:  # the caller went away while it waited
            self.apply(sm.Withdraw(ask))
            if isinstance(made, sm.Allocate) and future.done() and not future.cancelled():
                self._give_back(future)  # granted just before: nobody will hear of it
            raise
        except AllocationError as exc:
            assert context is not None
            await context.abort(getattr(grpc.StatusCode, exc.code), exc.reason)
            raise  # abort raises; this line is for the type checker
        finally:
            self._waiting.pop(ask, None)

    def _answer(self, instruction: sm.Reply | sm.Refuse) -> None:
        future = self._waiting.get(instruction.ask)
        if future is None or future.done():
            if isinstance(instruction, sm.Reply) and isinstance(instruction.value, sm.Allocation):
                self._release(instruction.value)  # granted after its caller gave up waiting
            return
        if isinstance(instruction, sm.Refuse):
            future.set_exception(AllocationError(instruction.code, instruction.reason))
        else:
            future.set_result(instruction.value)

    def _give_back(self, future: asyncio.Future[object]) -> None:
        """Release the allocation an abandoned ``Allocate`` was answered with, if any."""
        allocation = future.result() if future.exception() is None else None
        if isinstance(allocation, sm.Allocation):
            self._release(allocation)

    def _release(self, allocation: sm.Allocation) -> None:
        """Give back an allocation that nobody holds: else it would stay until its lease ends."""
        log.info("allocation abandoned", extra=fields(allocation=allocation.id))
        self.apply(sm.Release(0, allocation.id, self._clock()))

    def _message(self, allocation: sm.Allocation, with_grants: bool) -> spb.Allocation:
        gpus = []
        for part in allocation.slices:
            grant = grant_for(allocation, part)
            gpus.append(
                spb.AllocatedGpu(
                    node=part.node,
                    address=part.address,
                    index=part.index,
                    name=part.name,
                    memory=part.memory,
                    fraction=part.fraction,
                    grant=grants.sign(grant, self._secret) if with_grants else "",
                )
            )
        return spb.Allocation(
            id=allocation.id,
            gpus=gpus,
            expires_at=allocation.expires_at,
            ttl_s=allocation.ttl,
            owner=allocation.owner,
        )


def public_id(allocation_id: str) -> str:
    """What listings show of an allocation id: enough to tell allocations apart, not the
    whole id, which is the capability to renew (and so get grants) and to release."""
    return allocation_id[:8]


def _policy_name(value: int) -> str:
    """The state machine's name of a policy (an unknown number stays a number, refused there)."""
    return spb.Policy.Name(value).lower() if value in spb.Policy.values() else str(value)


def grant_for(allocation: sm.Allocation, part: sm.Slice) -> grants.Grant:
    """The grant for one GPU of an allocation, valid until the lease's current expiry."""
    return grants.Grant(
        allocation=allocation.id,
        node=part.node,
        device=part.index,
        memory=part.memory,
        fraction=part.fraction,
        expires_at=allocation.expires_at,
    )


class Scheduler:
    """A running scheduler, served by its own thread and event loop."""

    def __init__(self, host: str, port: int, loop: asyncio.AbstractEventLoop) -> None:
        self.host = host
        self.port = port
        self.loop = loop
        self.stop_requested = asyncio.Event()
        self.thread: threading.Thread | None = None
        self.metrics: MetricsServer | None = None  # the /metrics port, when asked for

    @property
    def address(self) -> str:
        return join_host_port(self.host, self.port)

    def wait(self) -> None:
        assert self.thread is not None
        while self.thread.is_alive():
            self.thread.join(0.5)  # a timed join lets Ctrl-C through

    def stop(self) -> None:
        """Stop serving (the stored state stays for the next start); again does nothing."""
        assert self.thread is not None
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.stop_requested.set)
            self.thread.join()

    def __enter__(self) -> Scheduler:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start_scheduler(
    listen: str,
    db: str,
    secret: bytes,
    node_timeout: float = 10.0,
    heartbeat_s: float = 2.0,
    tick_s: float = TICK_S,
    metrics_listen: str | None = None,
) -> Scheduler:
    """Start a scheduler on ``listen`` (port 0 picks one) with its state in ``db``.

    State stored there by an earlier run is taken up again: nodes, and every allocation.
    With ``metrics_listen`` (``HOST:PORT``), Prometheus metrics and health probes are
    served there.
    """
    started: Future[Scheduler] = Future()
    settings = (listen, db, secret, node_timeout, heartbeat_s, tick_s, metrics_listen)
    thread = threading.Thread(
        target=lambda: asyncio.run(_serve(*settings, started)), name="scheduler", daemon=True
    )
    thread.start()
    scheduler = started.result(timeout=60)
    scheduler.thread = thread
    return scheduler


async def _serve(
    listen: str,
    db: str,
    secret: bytes,
    node_timeout: float,
    heartbeat_s: float,
    tick_s: float,
    metrics_listen: str | None,
    started: Future[Scheduler],
) -> None:
    try:
        store = Store(db)
    except sqlite3.Error as exc:  # no such folder, not a database, no permission
        started.set_exception(OSError(f"cannot open the state database {db}: {exc}"))
        return
    machine = sm.SchedulerState(node_timeout)
    machine.restore(*store.load(), now=time.time())
    metrics = SchedulerMetrics(machine, run=on_loop(asyncio.get_running_loop()))
    service = SchedulerService(machine, store, secret, heartbeat_s, metrics=metrics)
    server = grpc.aio.server(options=SERVER_OPTIONS)
    spb_grpc.add_SchedulerServicer_to_server(service, server)
    try:
        port = server.add_insecure_port(listen)
    except RuntimeError:
        port = 0
    if port == 0:
        store.close()
        started.set_exception(OSError(f"cannot listen on {listen} (in use?)"))
        return
    await server.start()
    scheduler = Scheduler(ListenHosts.of(listen).local, port, asyncio.get_running_loop())
    if metrics_listen is not None:
        try:
            scheduler.metrics = serve_metrics(metrics_listen, metrics.registry)
        except OSError as exc:
            await server.stop(0)
            store.close()
            started.set_exception(OSError(f"cannot serve metrics on {metrics_listen}: {exc}"))
            return
    log.info(
        "scheduler listening",
        extra=fields(
            address=scheduler.address,
            nodes=len(machine.nodes),
            allocations=len(machine.allocations),
        ),
    )
    started.set_result(scheduler)
    ticker = asyncio.create_task(service.tick_forever(tick_s))
    await scheduler.stop_requested.wait()
    ticker.cancel()
    if scheduler.metrics is not None:
        await asyncio.to_thread(scheduler.metrics.close)  # a scrape may wait for this loop
    await server.stop(0.5)
    store.close()
    log.info("scheduler stopped", extra=fields(address=scheduler.address))
