"""The scheduler's decisions: a pure state machine, events in, instructions out.

Nothing here reads a clock, touches a socket or a file: every event carries the time it
happened (``now``, Unix seconds), and what must be said or stored comes back as
instructions for the async shell (``scheduler/service.py``) to carry out. So every decision
(placement, queueing, expiry, nodes going down) is tested without sockets or sleeps.

Capacity is counted in millionths of a GPU (:data:`UNITS`), so shares add up exactly: a
GPU takes allocations while their shares sum to at most its node's oversubscription
factor (1 unless the operator says otherwise). A memory-sized share takes
``memory / gpu memory`` of the GPU.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import NamedTuple

from gpupool.scheduler import limits
from gpupool.scheduler.limits import UNITS as UNITS
from gpupool.units import format_size

POLICIES = ("pack", "spread")


# The pool


@dataclass(frozen=True)
class Gpu:
    index: int
    uuid: str
    name: str
    memory: int


@dataclass(frozen=True)
class GpuFigures:
    """What a node last reported of one GPU."""

    memory_used: int = 0
    utilization: int = 0
    sessions: tuple[str, ...] = ()


@dataclass
class Node:
    name: str
    address: str
    gpus: tuple[Gpu, ...]
    oversubscription: float = 1.0
    backend: str = ""
    last_seen: float = 0.0
    up: bool = True
    figures: dict[int, GpuFigures] = field(default_factory=dict)

    @property
    def capacity(self) -> int:
        return round(self.oversubscription * UNITS)


@dataclass(frozen=True)
class Slice:
    """One GPU of an allocation, and the share of it the allocation holds."""

    node: str
    address: str
    index: int
    name: str
    units: int
    memory: int  # the quota, bytes

    @property
    def fraction(self) -> float:
        return self.units / UNITS


@dataclass(frozen=True)
class Request:
    count: int
    fraction: float | None = None  # exactly one of fraction and memory
    memory: int | None = None
    policy: str = "pack"
    same_node: bool = False
    ttl: float = 60.0
    wait: float = 0.0
    owner: str = ""
    team: str = ""  # the caller's team, from its API token ("" without one)
    user: str = ""

    def describe(self) -> str:
        share = f"{self.fraction:g}" if self.fraction is not None else format_size(self.memory or 0)
        where = " on one node" if self.same_node else ""
        return f"{self.count} GPU{'s' * (self.count != 1)} x {share}{where}"


@dataclass(frozen=True)
class Allocation:
    id: str
    slices: tuple[Slice, ...]
    ttl: float
    expires_at: float
    owner: str = ""
    team: str = ""
    user: str = ""
    granted_at: float = 0.0

    def gpu_seconds(self, now: float) -> float:
        """GPU-equivalent seconds it has held (a half GPU for an hour: 1800)."""
        return sum(part.units for part in self.slices) / UNITS * max(0.0, now - self.granted_at)


@dataclass(frozen=True)
class TeamQuota:
    """What one team may hold at once; None: no limit on that."""

    gpus: float | None = None  # GPU-equivalents: a half GPU counts 0.5
    memory: int | None = None  # bytes, the sum of the memory quotas
    allocations: int | None = None


@dataclass(frozen=True)
class Usage:
    """What a team holds now."""

    units: int = 0
    memory: int = 0
    allocations: int = 0

    @property
    def gpus(self) -> float:
        return self.units / UNITS


# Events


@dataclass(frozen=True)
class Register:
    node: Node
    now: float


@dataclass(frozen=True)
class Heartbeat:
    """A node's sign of life; the reply is its live allocations (None: register again)."""

    ask: int
    name: str
    figures: dict[int, GpuFigures]
    now: float


@dataclass(frozen=True)
class Allocate:
    """Asks for ``request``; ``allocation_id`` is the id it gets (the shell draws it)."""

    ask: int  # the shell's handle for the reply
    request: Request
    allocation_id: str
    now: float
    quota: TeamQuota | None = None  # the quota of the request's team, if it has one


@dataclass(frozen=True)
class Renew:
    """``team`` is the caller's ("" without a token): another team's allocation is refused."""

    ask: int
    allocation_id: str
    now: float
    team: str = ""


@dataclass(frozen=True)
class Release:
    """As :class:`Renew`; ``team`` None is the scheduler itself (an abandoned grant)."""

    ask: int
    allocation_id: str
    now: float
    team: str | None = ""


@dataclass(frozen=True)
class Withdraw:
    """The asker of ``ask`` went away: its request leaves the queue."""

    ask: int


@dataclass(frozen=True)
class Tick:
    """Time passes: leases expire, silent nodes go down, waits run out."""

    now: float


Event = Register | Heartbeat | Allocate | Renew | Release | Withdraw | Tick


# Instructions


@dataclass(frozen=True)
class Reply:
    """Answer the ask ``ask`` with ``value``."""

    ask: int
    value: object


@dataclass(frozen=True)
class Refuse:
    """Answer the ask ``ask`` with an error: ``code`` is a gRPC status name."""

    ask: int
    code: str
    reason: str


@dataclass(frozen=True)
class StoreNode:
    node: Node


@dataclass(frozen=True)
class StoreAllocation:
    allocation: Allocation


@dataclass(frozen=True)
class DeleteAllocation:
    allocation_id: str
    why: str  # "released" or "expired"
    team: str = ""
    gpu_seconds: float = 0.0  # what it used, for its team's account
    nodes: tuple[str, ...] = ()  # where it was: their daemons end its sessions


@dataclass(frozen=True)
class NodeDown:
    name: str
    silent_s: float


Instruction = Reply | Refuse | StoreNode | StoreAllocation | DeleteAllocation | NodeDown


class _Candidate(NamedTuple):
    """A GPU that could take a request's share now."""

    node: Node
    gpu: Gpu
    units: int
    memory: int
    free: int  # units free before this request


@dataclass(frozen=True)
class _Waiting:
    ask: int
    request: Request
    allocation_id: str
    deadline: float
    quota: TeamQuota | None = None


class SchedulerState:
    """Nodes, allocations and the queue of waiting requests."""

    def __init__(self, node_timeout: float = 10.0) -> None:
        self.node_timeout = node_timeout
        self.nodes: dict[str, Node] = {}
        self.allocations: dict[str, Allocation] = {}
        self._queue: list[_Waiting] = []

    def restore(
        self, nodes: Iterable[Node], allocations: Iterable[Allocation], now: float
    ) -> list[tuple[str, str, str]]:
        """Take up stored state after a restart; returns what was left out, as (kind, key,
        reason): rows that fail the checks a live request would (a NaN time-to-live stored
        by an older version, a hand-edited file) are not taken up.

        Nobody could renew while the scheduler was down, so every lease gets one
        time-to-live from now, and no more: a stored expiry far in the future is not kept.
        Nodes get a full timeout to send their next heartbeat.
        """
        dropped = []
        for node in nodes:
            problem = invalid_node(node)
            if problem is not None:
                dropped.append(("node", node.name, problem))
                continue
            node.last_seen = now
            self.nodes[node.name] = node
        for allocation in allocations:
            problem = limits.lease(allocation.ttl, allocation.expires_at) or _bad_slices(
                allocation, self.nodes
            )
            if problem is not None:
                dropped.append(("allocation", allocation.id, problem))
                continue
            self.allocations[allocation.id] = replace(allocation, expires_at=now + allocation.ttl)
        return dropped

    def handle(self, event: Event) -> list[Instruction]:
        handler = getattr(self, f"_on_{type(event).__name__.lower()}")
        return list(handler(event))

    # queries

    def used_units(self, node: str, index: int) -> int:
        return sum(
            part.units
            for allocation in self.allocations.values()
            for part in allocation.slices
            if (part.node, part.index) == (node, index)
        )

    def usage(self, team: str) -> Usage:
        held = [a for a in self.allocations.values() if a.team == team]
        return Usage(
            sum(part.units for a in held for part in a.slices),
            sum(part.memory for a in held for part in a.slices),
            len(held),
        )

    def teams(self) -> dict[str, Usage]:
        """What each team that holds allocations holds ("" for callers without a token)."""
        return {team: self.usage(team) for team in {a.team for a in self.allocations.values()}}

    def live_allocations(self, node: str) -> list[str]:
        return [
            allocation.id
            for allocation in self.allocations.values()
            if any(part.node == node for part in allocation.slices)
        ]

    def name_taken(self, node: Node, now: float) -> str | None:
        """Why ``node`` may not register under its name now, or None.

        A daemon that restarts takes its name back (at the same address at once, at another
        once the old one is down); while a node of that name is up elsewhere, a second
        daemon with the same name (two on one host, both named after it) would silently
        take over its GPUs and allocations.
        """
        known = self.nodes.get(node.name)
        if known is None or known.address == node.address or not self._alive(known, now):
            return None
        return (
            f"node {node.name!r} is registered from {known.address} and up: give the daemon at"
            f" {node.address} another --name (or stop the one at {known.address})"
        )

    def _alive(self, node: Node, now: float) -> bool:
        return node.up and now - node.last_seen <= self.node_timeout

    @property
    def waiting(self) -> int:
        return len(self._queue)

    # events

    def _on_register(self, event: Register) -> Iterator[Instruction]:
        node = replace(event.node, last_seen=event.now, up=True, figures={})
        self.nodes[node.name] = node
        yield StoreNode(node)
        for allocation in list(self.allocations.values()):  # a daemon back on another port
            slices = tuple(
                replace(part, address=node.address) if part.node == node.name else part
                for part in allocation.slices
            )
            if slices != allocation.slices:
                self.allocations[allocation.id] = replace(allocation, slices=slices)
                yield StoreAllocation(self.allocations[allocation.id])
        yield from self._drain(event.now)

    def _on_heartbeat(self, event: Heartbeat) -> Iterator[Instruction]:
        node = self.nodes.get(event.name)
        if node is None:
            yield Reply(event.ask, None)
            return
        node.last_seen = event.now
        node.figures = dict(event.figures)
        yield Reply(event.ask, self.live_allocations(node.name))
        if not node.up:
            node.up = True
            yield StoreNode(node)
            yield from self._drain(event.now)

    def _on_allocate(self, event: Allocate) -> Iterator[Instruction]:
        request = event.request
        problem = _invalid(request)
        if problem is None:
            problem = self._never_fits(request) or _never_within(request, event.quota)
            code = "FAILED_PRECONDITION"
        else:
            code = "INVALID_ARGUMENT"
        if problem is None:
            problem = self._over_quota(request, event.quota, None)
            code = "RESOURCE_EXHAUSTED"
        if problem is not None:
            yield Refuse(event.ask, code, problem)
            return
        waiting = _Waiting(
            event.ask, request, event.allocation_id, event.now + request.wait, event.quota
        )
        if self._queue:
            # first come, first served: nobody overtakes a waiting request, except onto GPUs
            # that none of the waiting requests could ever use (that delays none of them)
            beside = self._place(request, beside=self._queue)
            if not isinstance(beside, str):
                yield from self._grant(waiting, beside, event.now)
            elif request.wait > 0:
                yield from self._enqueue(waiting)
            else:
                first = min(w.deadline for w in self._queue) - event.now
                yield Refuse(
                    event.ask,
                    "RESOURCE_EXHAUSTED",
                    f"cannot fit now: {len(self._queue)} earlier request(s) wait for capacity"
                    f" ({request.describe()} asked, no wait; the first of them gives up within"
                    f" {max(first, 0):.0f} s)",
                )
            return
        placed = self._place(request)
        if isinstance(placed, str):
            if request.wait > 0:
                yield from self._enqueue(waiting)
            else:
                yield Refuse(event.ask, "RESOURCE_EXHAUSTED", placed)
            return
        yield from self._grant(waiting, placed, event.now)

    def _enqueue(self, waiting: _Waiting) -> Iterator[Instruction]:
        """Queue ``waiting``, unless the queue (or its team's part of it) is full."""
        team = waiting.request.team
        mine = sum(w.request.team == team for w in self._queue)
        if len(self._queue) >= limits.MAX_QUEUE or mine >= limits.MAX_WAITING_PER_TEAM:
            who = f"team {team!r}" if team else "callers without a token"
            yield Refuse(
                waiting.ask,
                "RESOURCE_EXHAUSTED",
                f"cannot fit now, and the queue is full: {len(self._queue)} request(s) wait,"
                f" {mine} of them of {who} (at most {limits.MAX_QUEUE},"
                f" {limits.MAX_WAITING_PER_TEAM} a team)",
            )
            return
        self._queue.append(waiting)

    def _on_renew(self, event: Renew) -> Iterator[Instruction]:
        allocation = self.allocations.get(event.allocation_id)
        if allocation is None:
            yield Refuse(event.ask, "NOT_FOUND", _gone(event.allocation_id))
            return
        if allocation.team and allocation.team != event.team:
            yield Refuse(event.ask, "PERMISSION_DENIED", _not_yours(allocation, event.team))
            return
        renewed = replace(allocation, expires_at=event.now + allocation.ttl)
        self.allocations[renewed.id] = renewed
        yield StoreAllocation(renewed)
        yield Reply(event.ask, renewed)

    def _on_release(self, event: Release) -> Iterator[Instruction]:
        allocation = self.allocations.get(event.allocation_id)
        if allocation is None:
            yield Refuse(event.ask, "NOT_FOUND", _gone(event.allocation_id))
            return
        if event.team is not None and allocation.team and allocation.team != event.team:
            yield Refuse(event.ask, "PERMISSION_DENIED", _not_yours(allocation, event.team))
            return
        del self.allocations[event.allocation_id]
        yield _deleted(allocation, "released", event.now)
        yield Reply(event.ask, None)
        yield from self._drain(event.now)

    def _on_withdraw(self, event: Withdraw) -> Iterator[Instruction]:
        self._queue = [waiting for waiting in self._queue if waiting.ask != event.ask]
        return iter(())

    def _on_tick(self, event: Tick) -> Iterator[Instruction]:
        now = event.now
        for node in self.nodes.values():
            if node.up and not self._alive(node, now):
                node.up = False
                yield NodeDown(node.name, now - node.last_seen)
                yield StoreNode(node)
        for allocation in list(self.allocations.values()):
            if allocation.expires_at <= now:
                del self.allocations[allocation.id]
                yield _deleted(allocation, "expired", now)
        yield from self._drain(now)
        for waiting in [w for w in self._queue if w.deadline <= now]:
            self._queue.remove(waiting)
            placed = self._place(waiting.request)
            reason = placed if isinstance(placed, str) else "cannot fit now"
            yield Refuse(
                waiting.ask,
                "RESOURCE_EXHAUSTED",
                f"{reason} (waited {waiting.request.wait:g} s)",
            )

    # placement

    def _drain(self, now: float) -> Iterator[Instruction]:
        """Place waiting requests in arrival order, up to the first that does not fit."""
        while self._queue:
            placed = self._place(self._queue[0].request)
            if isinstance(placed, str):
                return
            yield from self._grant(self._queue.pop(0), placed, now)

    def _grant(self, waiting: _Waiting, slices: list[Slice], now: float) -> Iterator[Instruction]:
        request = waiting.request
        over = self._over_quota(request, waiting.quota, slices)
        if over is not None:
            yield Refuse(waiting.ask, "RESOURCE_EXHAUSTED", over)
            return
        allocation = Allocation(
            waiting.allocation_id,
            tuple(slices),
            request.ttl,
            now + request.ttl,
            request.owner,
            request.team,
            request.user,
            granted_at=now,
        )
        self.allocations[allocation.id] = allocation
        yield StoreAllocation(allocation)
        yield Reply(waiting.ask, allocation)

    def _over_quota(
        self, request: Request, quota: TeamQuota | None, slices: list[Slice] | None
    ) -> str | None:
        """Why granting ``request`` (as ``slices``, or before placement, as far as is known
        then) would take its team past ``quota``, or None."""
        if quota is None:
            return None
        held = self.usage(request.team)
        asked = Usage(
            sum(part.units for part in slices) if slices else _known_units(request),
            sum(part.memory for part in slices) if slices else _known_memory(request),
            1,
        )
        team = f"team {request.team!r}"
        if quota.allocations is not None and held.allocations + 1 > quota.allocations:
            return (
                f"quota: {team} holds {held.allocations} allocation(s), its quota is"
                f" {quota.allocations}"
            )
        if quota.gpus is not None and held.units + asked.units > round(quota.gpus * UNITS):
            return (
                f"quota: {team} holds {held.gpus:g} GPUs and asks {asked.gpus:g} more"
                f" ({request.describe()}), its quota is {quota.gpus:g}"
            )
        if quota.memory is not None and held.memory + asked.memory > quota.memory:
            return (
                f"quota: {team} holds {format_size(held.memory)} and asks"
                f" {format_size(asked.memory)} more, its quota is {format_size(quota.memory)}"
            )
        return None

    def _share(self, node: Node, gpu: Gpu, request: Request) -> tuple[int, int] | None:
        """(units, memory quota) ``request`` takes of ``gpu``; None if it cannot ever.

        Every share takes at least ``MIN_UNITS`` of its GPU and a quota of at least
        ``MIN_MEMORY``: a GPU too small for that takes no share at all.
        """
        if request.fraction is not None:
            units, memory = round(request.fraction * UNITS), int(request.fraction * gpu.memory)
        else:
            assert request.memory is not None
            units, memory = -(-request.memory * UNITS // gpu.memory), request.memory
        units = max(units, limits.MIN_UNITS)
        fits = units <= node.capacity and limits.MIN_MEMORY <= memory <= gpu.memory
        return (units, memory) if fits else None

    def _never_fits(self, request: Request) -> str | None:
        """Why ``request`` cannot fit even an empty pool, or None."""
        hosts = [
            sum(self._share(node, gpu, request) is not None for gpu in node.gpus)
            for node in self.nodes.values()
        ]
        room = max(hosts, default=0) if request.same_node else sum(hosts)
        if room >= request.count:
            return None
        gpus = sum(len(node.gpus) for node in self.nodes.values())
        where = "the largest node has" if request.same_node else "the pool has"
        detail = f"{room} GPUs" if request.same_node else f"{gpus} GPUs"
        if request.memory is not None:
            largest = max((g.memory for n in self.nodes.values() for g in n.gpus), default=0)
            detail = f"{room} GPUs of at least {format_size(request.memory)}"
            detail += f" (the largest GPU has {format_size(largest)})"
        return f"can never fit: {request.describe()} asked, and {where} {detail}"

    def _place(self, request: Request, beside: Iterable[_Waiting] = ()) -> list[Slice] | str:
        """The GPUs for ``request`` now, by its policy, or why it does not fit now; with
        ``beside``, only GPUs that none of those waiting requests could ever take a share of
        (a request placed there delays none of them)."""
        candidates: list[_Candidate] = []
        down = [node.name for node in self.nodes.values() if not node.up]
        waiting = [w.request for w in beside]
        up_gpus = 0
        for node in self.nodes.values():
            if not node.up:
                continue
            for gpu in node.gpus:
                up_gpus += 1
                if any(self._share(node, gpu, other) is not None for other in waiting):
                    continue
                share = self._share(node, gpu, request)
                free = node.capacity - self.used_units(node.name, gpu.index)
                if share is not None and share[0] <= free:
                    candidates.append(_Candidate(node, gpu, *share, free))
        if request.same_node:
            by_node: dict[str, list[_Candidate]] = {}
            for candidate in candidates:
                by_node.setdefault(candidate.node.name, []).append(candidate)
            groups = [group for group in by_node.values() if len(group) >= request.count]
            pick = min if request.policy == "pack" else max
            candidates = pick(groups, key=lambda group: sum(c.free for c in group), default=[])
        if len(candidates) < request.count:
            free_text = (
                f"{request.fraction:g}"
                if request.fraction is not None
                else format_size(request.memory or 0)
            )
            reason = f"cannot fit now: {request.describe()} asked, and " + (
                f"no node up has that many GPUs with {free_text} free"
                if request.same_node
                else f"{len(candidates)} of the {up_gpus} GPUs up have {free_text} free"
            )
            if down:
                reason += f"; down: {', '.join(sorted(down))}"
            return reason
        chosen: list[_Candidate] = []
        for _ in range(request.count):
            best = min(candidates, key=lambda c: _rank(request.policy, c, chosen))
            candidates.remove(best)
            chosen.append(best)
        return [
            Slice(node.name, node.address, gpu.index, gpu.name, units, memory)
            for node, gpu, units, memory, _ in chosen
        ]


def _rank(
    policy: str, candidate: _Candidate, chosen: list[_Candidate]
) -> tuple[int, int, str, int]:
    """Order of preference among GPUs: ``pack`` takes the fullest GPU, on a node already
    used; ``spread`` a node not yet used, then the emptiest GPU."""
    node, gpu, _, _, free = candidate
    on_node = sum(other.node.name == node.name for other in chosen)
    if policy == "pack":
        return (free, -on_node, node.name, gpu.index)
    return (on_node, -free, node.name, gpu.index)


def invalid_node(node: Node) -> str | None:
    """What is wrong with a node that asks to register, or None.

    Checked before the node joins: one bad figure (a NaN factor, a GPU of no memory) would
    otherwise break the placement of every request in the pool, and be stored.
    """
    return limits.node(
        node.name,
        node.address,
        node.backend,
        node.oversubscription,
        ((gpu.index, gpu.uuid, gpu.name, gpu.memory) for gpu in node.gpus),
    )


def _invalid(request: Request) -> str | None:
    return (
        limits.share(request.count, request.fraction, request.memory)
        or (
            None
            if request.policy in POLICIES
            else f"policy: unknown policy {request.policy[:40]!r}; choose {' or '.join(POLICIES)}"
        )
        or limits.seconds("ttl_s", request.ttl, limits.MIN_TTL_S, limits.MAX_TTL_S)
        or limits.seconds("wait_s", request.wait, 0.0, limits.MAX_WAIT_S)
        or limits.text("owner", request.owner)
        or limits.text("team", request.team)
        or limits.text("user", request.user)
    )


def _never_within(request: Request, quota: TeamQuota | None) -> str | None:
    """Why ``request`` exceeds its team's quota even while the team holds nothing."""
    if quota is None:
        return None
    team = f"team {request.team!r}"
    if quota.allocations is not None and quota.allocations < 1:
        return f"quota: {team} may hold no allocation"
    if quota.gpus is not None and _known_units(request) > round(quota.gpus * UNITS):
        return (
            f"can never fit: {request.describe()} asked, and {team}'s quota is {quota.gpus:g} GPUs"
        )
    if quota.memory is not None and _known_memory(request) > quota.memory:
        return (
            f"can never fit: {request.describe()} asked, and {team}'s quota is"
            f" {format_size(quota.memory)}"
        )
    return None


def _known_units(request: Request) -> int:
    """The capacity ``request`` takes before it is placed, as far as is known: a fraction's
    (a memory share's depends on the GPUs it lands on, so only the minimum is known)."""
    if request.fraction is not None:
        return request.count * max(round(request.fraction * UNITS), limits.MIN_UNITS)
    return request.count * limits.MIN_UNITS


def _known_memory(request: Request) -> int:
    """The memory ``request`` takes before it is placed, as far as is known (a fraction's
    depends on the GPUs it lands on)."""
    return request.count * (request.memory or limits.MIN_MEMORY)


def _bad_slices(allocation: Allocation, nodes: dict[str, Node]) -> str | None:
    """Why a stored allocation's GPUs are no good: a share of nothing, or of no known node."""
    for part in allocation.slices:
        if part.units < limits.MIN_UNITS or part.memory < limits.MIN_MEMORY:
            return f"a share of GPU {part.index} of {part.node!r} below the minimum"
        if part.node not in nodes:
            return f"on node {part.node!r}, which is not stored"
    return None


def _deleted(allocation: Allocation, why: str, now: float) -> DeleteAllocation:
    nodes = tuple(dict.fromkeys(part.node for part in allocation.slices))
    return DeleteAllocation(allocation.id, why, allocation.team, allocation.gpu_seconds(now), nodes)


def _not_yours(allocation: Allocation, team: str | None) -> str:
    caller = f"team {team!r}" if team else "a caller without a token"
    return f"allocation {allocation.id[:8]} belongs to team {allocation.team!r}, not {caller}"


def _gone(allocation_id: str) -> str:
    return f"no allocation {allocation_id}: it was released or its lease expired"
