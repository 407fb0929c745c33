"""The scheduler's Prometheus metrics: one registry, fed by the shell.

The pool's figures (nodes, GPUs, capacity, allocations, the queue, each team's usage) are
read from the state machine when Prometheus scrapes, so they can never drift from it. What
happened (allocate requests by result, renewals, releases, expiries) is counted from the
events and the instructions the machine answered them with (:meth:`SchedulerMetrics.observe`,
called by ``service.py`` for every event), so the machine itself knows nothing of metrics.
``docs/operations.md`` says what each metric means.
"""

from __future__ import annotations

import concurrent.futures
from asyncio import AbstractEventLoop
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from gpupool.scheduler import state as sm

T = TypeVar("T")
TeamOf = Callable[[sm.Allocation], str | None]  # an allocation's team, None if it has none
Runner = Callable[[Callable[[], T]], T]
SCRAPE_TIMEOUT_S = 5.0


def on_loop(loop: AbstractEventLoop) -> Runner[object]:
    """What runs a function on the scheduler's loop for a scrape, and waits (bounded) for it:
    the machine is only ever touched from its loop, never from the metrics port's threads."""

    def run(function: Callable[[], object]) -> object:
        future: concurrent.futures.Future[object] = concurrent.futures.Future()

        def call() -> None:
            try:
                future.set_result(function())
            except Exception as exc:
                future.set_exception(exc)

        loop.call_soon_threadsafe(call)
        return future.result(timeout=SCRAPE_TIMEOUT_S)

    return run


def directly(function: Callable[[], object]) -> object:
    return function()


def team_of_token(allocation: sm.Allocation) -> str | None:
    """The team whose API token asked for ``allocation``; None for a caller without one."""
    return allocation.team or None


class SchedulerMetrics:
    """The metrics of one scheduler, in :attr:`registry`.

    ``team_of`` names the team an allocation counts against (by default the team of the
    API token that asked for it): the ``gpupool_scheduler_team_*`` families show each team's
    usage, summed from the live allocations at every scrape. ``run`` runs the scrape's
    reading of the machine where the machine lives (:func:`on_loop`).
    """

    def __init__(
        self,
        machine: sm.SchedulerState,
        registry: CollectorRegistry | None = None,
        team_of: TeamOf = team_of_token,
        run: Runner[object] = directly,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._requests = Counter(
            "gpupool_scheduler_allocate_requests",
            "Allocate requests by result: granted, or the refusal's gRPC code",
            ["result"],
            registry=self.registry,
        )
        self._queued = Counter(
            "gpupool_scheduler_queued_requests",
            "Allocate requests that waited in the queue for capacity",
            registry=self.registry,
        )
        self._renewals = Counter(
            "gpupool_scheduler_lease_renewals",
            "Lease renewals by result: renewed, or not_found (released or expired)",
            ["result"],
            registry=self.registry,
        )
        self._ended = Counter(
            "gpupool_scheduler_allocations_ended",
            "Allocations ended, by why: released, or expired (a lease not renewed in time)",
            ["reason"],
            registry=self.registry,
        )
        self._nodes_down = Counter(
            "gpupool_scheduler_node_downs",
            "Times a node fell silent past the node timeout",
            registry=self.registry,
        )
        for result in ("granted", "invalid_argument", "failed_precondition", "resource_exhausted"):
            self._requests.labels(result)
        for result in ("renewed", "not_found"):
            self._renewals.labels(result)
        for reason in ("released", "expired"):
            self._ended.labels(reason)
        self.registry.register(_Pool(machine, team_of, run))

    def observe(self, event: sm.Event, instructions: Sequence[sm.Instruction]) -> None:
        """Count what ``event`` led to (the machine's ``instructions`` for it)."""
        for instruction in instructions:
            if isinstance(instruction, sm.DeleteAllocation):
                self._ended.labels(instruction.why).inc()
            elif isinstance(instruction, sm.NodeDown):
                self._nodes_down.inc()
            elif isinstance(instruction, sm.Reply | sm.Refuse):
                self._answer(event, instruction)
        if isinstance(event, sm.Allocate) and not any(
            isinstance(each, sm.Reply | sm.Refuse) and each.ask == event.ask
            for each in instructions
        ):
            self._queued.inc()  # neither granted nor refused at once: it waits

    def _answer(self, event: sm.Event, instruction: sm.Reply | sm.Refuse) -> None:
        renewal = isinstance(event, sm.Renew) and event.ask == instruction.ask
        if isinstance(instruction, sm.Refuse):
            code = instruction.code.lower()
            (self._renewals if renewal else self._requests).labels(code).inc()
        elif renewal:
            self._renewals.labels("renewed").inc()
        elif isinstance(instruction.value, sm.Allocation):  # granted now or from the queue
            self._requests.labels("granted").inc()


class _Pool(Collector):
    """The pool's figures, read from the state machine at scrape time."""

    def __init__(self, machine: sm.SchedulerState, team_of: TeamOf, run: Runner[object]) -> None:
        self._machine = machine
        self._team_of = team_of
        self._run = run

    def collect(self) -> Iterator[GaugeMetricFamily]:
        families = self._run(lambda: list(self._families()))
        assert isinstance(families, list)
        yield from families

    def _families(self) -> Iterator[GaugeMetricFamily]:
        machine = self._machine
        nodes = GaugeMetricFamily("gpupool_scheduler_nodes", "Nodes by state", labels=["state"])
        gpus = GaugeMetricFamily("gpupool_scheduler_gpus", "GPUs by node state", labels=["state"])
        capacity = GaugeMetricFamily(
            "gpupool_scheduler_capacity_gpus",
            "Capacity of the GPUs of nodes up, in GPUs (oversubscription included): free or"
            " allocated",
            labels=["state"],
        )
        memory = GaugeMetricFamily(
            "gpupool_scheduler_memory_bytes",
            "Memory of the GPUs of nodes up: total, or allocated as quotas",
            labels=["state"],
        )
        per_gpu = GaugeMetricFamily(
            "gpupool_scheduler_gpu_allocated_ratio",
            "Share of each GPU's capacity allocated",
            labels=["node", "gpu"],
        )
        used = GaugeMetricFamily(
            "gpupool_scheduler_gpu_memory_used_bytes",
            "Memory in use on each GPU, as its node last reported",
            labels=["node", "gpu"],
        )
        busy = GaugeMetricFamily(
            "gpupool_scheduler_gpu_utilization_ratio",
            "Utilisation of each GPU, as its node last reported",
            labels=["node", "gpu"],
        )
        allocations = GaugeMetricFamily("gpupool_scheduler_allocations", "Live allocations")
        queue = GaugeMetricFamily(
            "gpupool_scheduler_queue_length", "Allocate requests waiting for capacity"
        )
        counts = {"up": 0, "down": 0}
        gpu_counts = {"up": 0, "down": 0}
        free = allocated = total_memory = 0
        live = list(machine.allocations.values())
        taken_of: dict[tuple[str, int], int] = {}
        for allocation in live:
            for part in allocation.slices:
                key = (part.node, part.index)
                taken_of[key] = taken_of.get(key, 0) + part.units
        for node in machine.nodes.values():
            state = "up" if node.up else "down"
            counts[state] += 1
            gpu_counts[state] += len(node.gpus)
            for gpu in node.gpus:
                taken = taken_of.get((node.name, gpu.index), 0)
                figures = node.figures.get(gpu.index, sm.GpuFigures())
                labels = [node.name, str(gpu.index)]
                per_gpu.add_metric(labels, taken / node.capacity)
                used.add_metric(labels, figures.memory_used)
                busy.add_metric(labels, figures.utilization / 100)
                if node.up:
                    free += max(0, node.capacity - taken)
                    allocated += taken
                    total_memory += gpu.memory
        for state in ("up", "down"):
            nodes.add_metric([state], counts[state])
            gpus.add_metric([state], gpu_counts[state])
        capacity.add_metric(["free"], free / sm.UNITS)
        capacity.add_metric(["allocated"], allocated / sm.UNITS)
        memory.add_metric(["total"], total_memory)
        memory.add_metric(["allocated"], sum(p.memory for a in live for p in a.slices))
        allocations.add_metric([], len(live))
        queue.add_metric([], machine.waiting)
        yield from (nodes, gpus, capacity, memory, per_gpu, used, busy, allocations, queue)
        yield from self._teams(live)

    def _teams(self, live: list[sm.Allocation]) -> Iterator[GaugeMetricFamily]:
        team_gpus = GaugeMetricFamily(
            "gpupool_scheduler_team_allocated_gpus",
            "GPUs (fractions summed) held by each team's live allocations",
            labels=["team"],
        )
        team_memory = GaugeMetricFamily(
            "gpupool_scheduler_team_allocated_memory_bytes",
            "Memory quotas held by each team's live allocations",
            labels=["team"],
        )
        team_allocations = GaugeMetricFamily(
            "gpupool_scheduler_team_allocations", "Live allocations of each team", labels=["team"]
        )
        usage: dict[str, list[float]] = {}
        for allocation in live:
            team = self._team_of(allocation)
            if team is None:
                continue
            figures = usage.setdefault(team, [0.0, 0.0, 0.0])
            figures[0] += sum(part.fraction for part in allocation.slices)
            figures[1] += sum(part.memory for part in allocation.slices)
            figures[2] += 1
        for team, (share, memory, count) in sorted(usage.items()):
            team_gpus.add_metric([team], share)
            team_memory.add_metric([team], memory)
            team_allocations.add_metric([team], count)
        yield from (team_gpus, team_memory, team_allocations)
