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
import math
import secrets
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError, Message

from gpupool import grants
from gpupool.addresses import ListenHosts, join_host_port
from gpupool.errors import AllocationError
from gpupool.logs import fields
from gpupool.proto import scheduler_pb2 as spb
from gpupool.proto import scheduler_pb2_grpc as spb_grpc
from gpupool.proto.limits import MESSAGE_LIMIT
from gpupool.scheduler import limits
from gpupool.scheduler import state as sm
from gpupool.scheduler.store import Identity, Store
from gpupool.tls import TLSFiles

log = logging.getLogger(__name__)

TICK_S = 0.25
QUIET_S = 60.0
HINT = ": give the daemon the scheduler's cluster secret (GPUPOOL_CLUSTER_SECRET or --secret-file)"
NEEDS_TOKEN = (
    "this scheduler requires an API token: set GPUPOOL_TOKEN (an admin makes one with"
    " `gpupool token create`)"
)
BAD_TOKEN = "the API token (GPUPOOL_TOKEN) is unknown or revoked"
# A scheduler's messages are small: a 10 MB string is refused by gRPC before it is parsed.
# Replies (a pool's listing) may be larger.
OPTIONS = [
    ("grpc.max_receive_message_length", limits.MESSAGE_LIMIT),
    ("grpc.max_send_message_length", MESSAGE_LIMIT),
    ("grpc.so_reuseport", 0),
]


class SchedulerService(spb_grpc.SchedulerServicer):
    """The ``Scheduler`` service over one state machine and its store.

    With ``require_tokens``, every client call (Allocate, Renew, Release, Pool) needs a live
    API token; without, a call may come without one (an open pool) and one that brings a
    token is still held to it: an unknown or revoked one is refused, and its team's quota
    applies. Nodes prove the cluster secret instead, with proofs that are good once.
    """

    def __init__(
        self,
        machine: sm.SchedulerState,
        store: Store,
        secret: bytes,
        heartbeat_s: float,
        clock: Callable[[], float] = time.time,
        require_tokens: bool = False,
    ) -> None:
        self._machine = machine
        self._store = store
        self._secret = secret
        self._guard = grants.ProofGuard(secret)
        self._heartbeat_s = heartbeat_s
        self._clock = clock
        self._require_tokens = require_tokens
        self._asks = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[object]] = {}
        self._watchers: dict[str, set[asyncio.Event]] = {}  # held heartbeats, by node
        self._quiet_until = 0.0  # refused registrations are logged once a minute at most

    # the calls

    async def Register(
        self, request: spb.NodeRegistration, context: grpc.aio.ServicerContext
    ) -> spb.NodeAccepted:
        now = self._clock()
        await self._prove(context, "register", request.name, request, now, log_refusal=True)
        node = sm.Node(
            name=request.name,
            address=request.address,
            gpus=tuple(sm.Gpu(g.index, g.uuid, g.name, g.memory) for g in request.gpus),
            oversubscription=request.oversubscription or 1.0,
            backend=request.backend,
        )
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
        await self._prove(context, "heartbeat", request.name, request, self._clock())
        problem = limits.figures((g.index, g.utilization, g.sessions) for g in request.gpus)
        if problem is not None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        figures = {
            g.index: sm.GpuFigures(g.memory_used, g.utilization, tuple(g.sessions))
            for g in request.gpus
        }
        live = await self._ask(lambda ask: sm.Heartbeat(ask, request.name, figures, self._clock()))
        if live is None:
            return spb.HeartbeatReply(known=False)
        wait = min(request.wait_s, self._heartbeat_s) if math.isfinite(request.wait_s) else 0.0
        if wait > 0:  # held until one of the node's allocations ends, or the wait is over
            ended = asyncio.Event()
            self._watchers.setdefault(request.name, set()).add(ended)
            try:
                await asyncio.wait_for(ended.wait(), wait)
            except TimeoutError:
                pass
            finally:
                self._watchers[request.name].discard(ended)
            live = self._machine.live_allocations(request.name)
        assert isinstance(live, list)
        return spb.HeartbeatReply(known=True, live_allocations=live)

    async def CheckAllocation(
        self, request: spb.AllocationCheck, context: grpc.aio.ServicerContext
    ) -> spb.AllocationStatus:
        await self._prove(context, "check", request.node, request, self._clock())
        allocation = self._machine.allocations.get(request.allocation)
        live = allocation is not None and any(p.node == request.node for p in allocation.slices)
        return spb.AllocationStatus(live=live)

    async def Allocate(
        self, request: spb.AllocationRequest, context: grpc.aio.ServicerContext
    ) -> spb.Allocation:
        caller = await self._caller(context)
        team, user = (caller.team, caller.user) if caller else ("", "")
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
            team=team,
            user=user,
        )
        quota = self._store.quota(team)
        allocation_id = secrets.token_hex(16)  # a bearer capability: unguessable
        allocation = await self._ask(
            lambda n: sm.Allocate(n, ask, allocation_id, self._clock(), quota), context
        )
        assert isinstance(allocation, sm.Allocation)
        log.info(
            "allocated",
            extra=fields(
                allocation=allocation.id, owner=ask.owner, team=team, gpus=len(allocation.slices)
            ),
        )
        return self._message(allocation, with_grants=True)

    async def Renew(
        self, request: spb.LeaseRef, context: grpc.aio.ServicerContext
    ) -> spb.Allocation:
        team = await self._team(request, context)
        allocation = await self._ask(
            lambda n: sm.Renew(n, request.id, self._clock(), team), context
        )
        assert isinstance(allocation, sm.Allocation)
        return self._message(allocation, with_grants=True)

    async def Release(
        self, request: spb.LeaseRef, context: grpc.aio.ServicerContext
    ) -> spb.Released:
        team = await self._team(request, context)
        await self._ask(lambda n: sm.Release(n, request.id, self._clock(), team), context)
        return spb.Released()

    async def Pool(
        self, request: spb.PoolRequest, context: grpc.aio.ServicerContext
    ) -> spb.PoolState:
        await self._caller(context)
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
        return spb.PoolState(gpus=gpus, allocations=allocations, teams=self._teams())

    # who calls

    async def _prove(
        self,
        context: grpc.aio.ServicerContext,
        call: str,
        node: str,
        message: Message,
        now: float,
        log_refusal: bool = False,
    ) -> None:
        """Refuse a node's call whose proof is missing, forged, stale or used before. The
        proof is checked first: a heartbeat's reply names allocation ids (capabilities)."""
        proof = message.proof  # type: ignore[attr-defined]
        problem = self._guard.check(call, node, grants.message_body(message), proof, now)
        if problem is None:
            return
        if "cluster secret" in problem:
            problem += HINT
        if log_refusal and now >= self._quiet_until:  # a stranger cannot flood the log
            self._quiet_until = now + QUIET_S
            log.warning(
                "registration refused (the next such refusals go unlogged for a minute)",
                extra=fields(node=node[:64], reason=problem),
            )
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, problem)

    async def _caller(self, context: grpc.aio.ServicerContext) -> Identity | None:
        """Who calls, by the API token in the call's metadata; None: no token (an open pool)."""
        token = _bearer(context.invocation_metadata() or ())
        if token is None:
            if self._require_tokens:
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, NEEDS_TOKEN)
            return None
        identity = self._store.identity(token)
        if identity is None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, BAD_TOKEN)
        return identity

    async def _team(self, request: spb.LeaseRef, context: grpc.aio.ServicerContext) -> str:
        """The caller's team for a call on an allocation (whose id is checked first)."""
        problem = limits.allocation_id(request.id)
        if problem is not None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        caller = await self._caller(context)
        return caller.team if caller else ""

    def _teams(self) -> list[spb.TeamUsage]:
        stored = self._store.teams()
        held = self._machine.teams()
        listed = []
        for team in sorted(set(stored) | set(held)):
            quota, gpu_seconds = stored.get(team, (None, 0.0))
            usage = held.get(team, sm.Usage())
            row = spb.TeamUsage(
                team=team,
                gpus=usage.gpus,
                memory=usage.memory,
                allocations=usage.allocations,
                gpu_seconds=gpu_seconds,
            )
            if quota is not None and quota.gpus is not None:
                row.quota_gpus = quota.gpus
            if quota is not None and quota.memory is not None:
                row.quota_memory = quota.memory
            if quota is not None and quota.allocations is not None:
                row.quota_allocations = quota.allocations
            listed.append(row)
        return listed

    # the machine

    def apply(self, event: sm.Event) -> None:
        """Feed ``event`` to the machine and carry out its instructions."""
        for instruction in self._machine.handle(event):
            if isinstance(instruction, sm.StoreNode):
                self._store.save_node(instruction.node)
            elif isinstance(instruction, sm.StoreAllocation):
                self._store.save_allocation(instruction.allocation)
            elif isinstance(instruction, sm.DeleteAllocation):
                self._store.delete_allocation(
                    instruction.allocation_id, instruction.team, instruction.gpu_seconds
                )
                for node in instruction.nodes:  # held heartbeats answer now
                    for ended in self._watchers.get(node, ()):
                        ended.set()
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
        self.apply(sm.Release(0, allocation.id, self._clock(), team=None))

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
            team=allocation.team,
            user=allocation.user,
        )


def handler(service: SchedulerService) -> grpc.GenericRpcHandler:
    """The service's calls, each parsing its own request, in place of the generated
    ``add_SchedulerServicer_to_server``: bytes that are no message get INVALID_ARGUMENT
    naming the message, where gRPC's own parsing answers INTERNAL and logs a traceback that
    a stranger could fill the log with."""
    calls: dict[str, tuple[Callable[[Any, Any], Awaitable[Message]], type[Message]]] = {
        "Register": (service.Register, spb.NodeRegistration),
        "Heartbeat": (service.Heartbeat, spb.NodeHeartbeat),
        "Allocate": (service.Allocate, spb.AllocationRequest),
        "Renew": (service.Renew, spb.LeaseRef),
        "Release": (service.Release, spb.LeaseRef),
        "Pool": (service.Pool, spb.PoolRequest),
        "CheckAllocation": (service.CheckAllocation, spb.AllocationCheck),
    }
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            _parsing(call, kind), response_serializer=_serialize
        )
        for name, (call, kind) in calls.items()
    }
    return grpc.method_handlers_generic_handler("gpupool.v1.Scheduler", handlers)


def _parsing(
    call: Callable[[Any, Any], Awaitable[Message]], kind: type[Message]
) -> Callable[[bytes, grpc.aio.ServicerContext], Awaitable[Message]]:
    async def parse_then_call(data: bytes, context: grpc.aio.ServicerContext) -> Message:
        try:
            request = kind.FromString(data)
        except DecodeError:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"not a {kind.DESCRIPTOR.name} message"
            )
        return await call(request, context)

    return parse_then_call


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


def public_id(allocation_id: str) -> str:
    """What listings show of an allocation id: enough to tell allocations apart, not the
    whole id, which is the capability to renew (and so get grants) and to release."""
    return allocation_id[:8]


def _bearer(metadata: Iterable[tuple[str, str | bytes]]) -> str | None:
    """The token of an ``authorization: Bearer T`` entry, if there is one."""
    for key, value in metadata:
        if key == "authorization":
            text = value.decode(errors="replace") if isinstance(value, bytes) else value
            return text.removeprefix("Bearer ").strip()
    return None


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
    tls: TLSFiles | None = None,
    require_tokens: bool = False,
) -> Scheduler:
    """Start a scheduler on ``listen`` (port 0 picks one) with its state in ``db``.

    State stored there by an earlier run is taken up again: nodes, and every allocation.
    ``tls`` serves gRPC over TLS (with ``client_ca``, only to clients with certificates it
    signed); ``require_tokens`` refuses client calls without a live API token.
    """
    started: Future[Scheduler] = Future()
    settings = _Settings(listen, db, secret, node_timeout, heartbeat_s, tick_s, tls, require_tokens)
    thread = threading.Thread(
        target=lambda: asyncio.run(_serve(settings, started)), name="scheduler", daemon=True
    )
    thread.start()
    scheduler = started.result(timeout=60)
    scheduler.thread = thread
    return scheduler


@dataclass(frozen=True)
class _Settings:
    listen: str
    db: str
    secret: bytes
    node_timeout: float
    heartbeat_s: float
    tick_s: float
    tls: TLSFiles | None
    require_tokens: bool


async def _serve(settings: _Settings, started: Future[Scheduler]) -> None:
    listen, db = settings.listen, settings.db
    try:
        store = Store(db)
        nodes, allocations, unreadable = store.load()
    except sqlite3.Error as exc:  # no such folder, not a database, no permission
        started.set_exception(OSError(f"cannot open the state database {db}: {exc}"))
        return
    machine = sm.SchedulerState(settings.node_timeout)
    for row in unreadable:
        log.warning("stored row unreadable, left out", extra=fields(key=row[:80]))
    for kind, key, reason in machine.restore(nodes, allocations, now=time.time()):
        log.warning(f"stored {kind} left out", extra=fields(key=key[:64], reason=reason))
        if kind == "node":
            store.delete_node(key)
        else:
            store.delete_allocation(key)
    service = SchedulerService(
        machine,
        store,
        settings.secret,
        settings.heartbeat_s,
        require_tokens=settings.require_tokens,
    )
    server = grpc.aio.server(options=OPTIONS)
    server.add_generic_rpc_handlers((handler(service),))
    try:
        if settings.tls is None:
            port = server.add_insecure_port(listen)
        else:
            port = server.add_secure_port(listen, settings.tls.credentials())
    except RuntimeError:
        port = 0
    if port == 0:
        store.close()
        started.set_exception(OSError(f"cannot listen on {listen} (in use?)"))
        return
    await server.start()
    scheduler = Scheduler(ListenHosts.of(listen).local, port, asyncio.get_running_loop())
    log.info(
        "scheduler listening",
        extra=fields(
            address=scheduler.address,
            nodes=len(machine.nodes),
            allocations=len(machine.allocations),
            tls=settings.tls is not None,
            tokens="required" if settings.require_tokens else "optional",
        ),
    )
    started.set_result(scheduler)
    ticker = asyncio.create_task(service.tick_forever(settings.tick_s))
    await scheduler.stop_requested.wait()
    ticker.cancel()
    await server.stop(0.5)
    store.close()
    log.info("scheduler stopped", extra=fields(address=scheduler.address))
