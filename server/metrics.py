"""The daemon's Prometheus metrics: one registry, fed by the front process.

Two kinds of figure. Events the front sees (a session opened or refused, and closed) are
counted as they happen, by :class:`DaemonMetrics`'s methods that ``service.py`` calls. What
the devices and the workers did is read when Prometheus scrapes: memory and utilisation
(NVML on a GPU; the ledger and the workers' busy time on the emulator), and the counts each
worker keeps in its row of the device's shared counter block (``counters.py``): copy bytes,
launches, array operations, peer and collective bytes. ``docs/operations.md`` says what each
metric means.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from gpupool.server.backends.base import DeviceInfo
from gpupool.server.counters import (
    COLLECTIVES,
    DIRECTIONS,
    PEERS,
    TRANSPORTS,
    BusyShare,
    Cell,
    summed,
)
from gpupool.server.nvml import Nvml
from gpupool.server.pool import WorkerPool

# why the front refuses to open a session: no grant or a bad one, no such device, not an
# opening, no worker could start, the device's sessions are all taken or the daemon stops
REFUSALS = (
    "cudaErrorNotPermitted",
    "cudaErrorInvalidDevice",
    "cudaErrorInvalidValue",
    "cudaErrorInitializationError",
    "cudaErrorDevicesUnavailable",
)


class DaemonMetrics:
    """The metrics of one daemon, in :attr:`registry`."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._opens = Counter(
            "gpupool_session_opens",
            "Sessions opened, by device and transport",
            ["device", "transport"],
            registry=self.registry,
        )
        self._refusals = Counter(
            "gpupool_session_refusals",
            "Session openings refused, by transport and the CUDA error the client got",
            ["transport", "reason"],
            registry=self.registry,
        )
        self._open = Gauge(
            "gpupool_sessions",
            "Open sessions, by device and transport",
            ["device", "transport"],
            registry=self.registry,
        )
        self._quota = Gauge(
            "gpupool_gpu_memory_quota_bytes",
            "Memory quotas of the open sessions (their grants' memory), summed by device",
            ["device"],
            registry=self.registry,
        )

    def watch(
        self, backend: str, devices: Sequence[DeviceInfo], pools: Sequence[WorkerPool]
    ) -> None:
        """Report the figures of these devices and their workers at every scrape."""
        for transport in TRANSPORTS:
            for reason in REFUSALS:
                self._refusals.labels(transport, reason)
        for pool in pools:
            self._quota.labels(str(pool.device))
            for transport in TRANSPORTS:
                self._open.labels(str(pool.device), transport)
                self._opens.labels(str(pool.device), transport)
        self.registry.register(_Devices(backend, devices, pools))

    def session_opened(
        self, pool: WorkerPool, slot: int, transport: str, quota: int
    ) -> Callable[[], None]:
        """Count a session opened on the worker in ``slot``; returns what to call once it
        has closed. ``quota`` is its grant's memory (0: a bare daemon's session)."""
        device = str(pool.device)
        pool.counters.assign(slot, transport)
        self._opens.labels(device, transport).inc()
        self._open.labels(device, transport).inc()
        self._quota.labels(device).inc(quota)

        def closed() -> None:
            self._open.labels(device, transport).dec()
            self._quota.labels(device).dec(quota)

        return closed

    def session_refused(self, transport: str, reason: str) -> None:
        """Count a refused opening; ``reason`` is the CUDA error's name (a bounded set)."""
        self._refusals.labels(transport, reason).inc()


class _Devices(Collector):
    """The figures read at scrape time, from the pools and NVML."""

    def __init__(
        self, backend: str, devices: Sequence[DeviceInfo], pools: Sequence[WorkerPool]
    ) -> None:
        self._devices = list(devices)
        self._pools = list(pools)
        self._nvml = Nvml() if backend == "cupy" else None
        self._busy = {pool.device: BusyShare(pool.counters) for pool in pools}

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        info = GaugeMetricFamily(
            "gpupool_gpu_info", "The daemon's devices (value 1)", labels=["device", "name", "uuid"]
        )
        total = _gauge("gpupool_gpu_memory_total_bytes", "Memory of each device")
        used = _gauge("gpupool_gpu_memory_used_bytes", "Memory in use on each device")
        utilisation = _gauge(
            "gpupool_gpu_utilization_ratio",
            "Share of time the device was busy (NVML on a GPU; the workers' serving time on"
            " the emulator)",
        )
        copies = _counter(
            "gpupool_copy_bytes", "Bytes copied", ["device", "direction", "transport"]
        )
        launches = _counter("gpupool_launches", "Kernel launches", ["device", "transport"])
        array_ops = _counter("gpupool_array_ops", "Array operations", ["device", "transport"])
        busy = _counter("gpupool_worker_busy_seconds", "Time workers spent serving messages")
        starts = _counter("gpupool_worker_starts", "Worker processes started")
        crashes = _counter(
            "gpupool_worker_crashes", "Workers that died of a signal or an unexpected status"
        )
        peer = _counter(
            "gpupool_peer_copy_bytes",
            "Device-to-device copies with another daemon's device",
            ["device", "direction"],
        )
        collective = _counter(
            "gpupool_collective_bytes", "Bytes sent in collectives", ["device", "op"]
        )
        for device, pool in zip(self._devices, self._pools, strict=True):
            label = str(pool.device)
            totals = pool.counters.totals()
            memory_used, ratio = self._figures(device, pool)
            info.add_metric([label, device.name, device.uuid], 1)
            total.add_metric([label], device.total_memory)
            used.add_metric([label], memory_used)
            utilisation.add_metric([label], ratio)
            for transport, row in totals.items():
                for direction, cell in DIRECTIONS.items():
                    copies.add_metric([label, direction, transport], int(row[cell]))
                launches.add_metric([label, transport], int(row[Cell.LAUNCHES]))
                array_ops.add_metric([label, transport], int(row[Cell.ARRAY_OPS]))
            busy.add_metric([label], summed(totals, Cell.BUSY_NS) / 1e9)
            starts.add_metric([label], pool.counters.starts)
            crashes.add_metric([label], pool.counters.crashes)
            for direction, cell in PEERS.items():
                peer.add_metric([label, direction], summed(totals, cell))
            for index, op in enumerate(COLLECTIVES):
                collective.add_metric([label, op], summed(totals, Cell.COLLECTIVE_BYTES + index))
        yield from (info, total, used, utilisation, copies, launches, array_ops, busy)
        yield from (starts, crashes, peer, collective)

    def _figures(self, device: DeviceInfo, pool: WorkerPool) -> tuple[int, float]:
        """(memory used, utilisation ratio) of one device."""
        if self._nvml is not None:
            memory_used, percent = self._nvml.figures(device)
            return memory_used, percent / 100
        memory_used = pool.ledger.used() if pool.ledger is not None else 0
        return memory_used, self._busy[pool.device]()


def _gauge(name: str, documentation: str) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=["device"])


def _counter(
    name: str, documentation: str, labels: Sequence[str] = ("device",)
) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, labels=list(labels))
