"""The daemon's and the scheduler's /metrics, scraped over HTTP during real workloads."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

import gpupool
from gpupool import runtime as rt
from gpupool.client.lease import allocate
from gpupool.proto import gpupool_pb2 as pb
from gpupool.scheduler.service import start_scheduler
from gpupool.server.counters import COLLECTIVES, Cell, DeviceCounters, SlotCounters
from gpupool.server.daemon import Daemon, PoolMembership, start_daemon
from tests.conftest import Samples, scrape, value

SECRET = b"metrics-test-secret-0123456789"
SAXPY = r"""
extern "C" __global__ void saxpy(float a, const float* x, float* y, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = a * x[i] + y[i];
}"""
ILLEGAL = r"""
extern "C" __global__ void poke(int* p) { p[threadIdx.x] = 42; }
"""


def names(samples: Samples) -> set[str]:
    return {name for name, _ in samples}


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    started = start_daemon(
        backend="emu", emu_devices=2, emu_memory=1 << 30, metrics_listen="127.0.0.1:0"
    )
    yield started
    started.stop()


def test_the_daemon_counts_a_real_workload(daemon: Daemon, monkeypatch: pytest.MonkeyPatch) -> None:
    assert daemon.metrics is not None
    url = daemon.metrics.url
    before = scrape(url)
    assert value(before, "gpupool_gpu_memory_total_bytes", device="1") == 1 << 30
    assert value(before, "gpupool_sessions", device="0", transport="tcp") == 0
    monkeypatch.setenv("GPUPOOL_TRANSPORT", "tcp")
    gpupool.connect(daemon.address)
    try:
        size = 1 << 20
        host = np.ones(size // 4, np.float32)
        x, y = rt.malloc(size), rt.malloc(size)
        rt.memcpy(x, host.ctypes.data, size, rt.memcpyHostToDevice)
        rt.memcpy(y, host.ctypes.data, size, rt.memcpyHostToDevice)
        saxpy = gpupool.Module.from_source(SAXPY).get_function("saxpy")
        for _ in range(3):
            saxpy((size // 4 // 256,), (256,), (np.float32(2.0), x, y, np.int32(size // 4)))
        rt.memcpy(x, y, size, rt.memcpyDeviceToDevice)
        out = np.empty_like(host)
        rt.memcpy(out.ctypes.data, x, size, rt.memcpyDeviceToHost)
        assert (out == 7.0).all()
        import gpupool.cupy as cp

        total = float((cp.arange(1000, dtype=cp.float32) * 2).sum())
        assert total == 999_000.0
        deadline = time.monotonic() + 1.2  # busy for a while: utilisation shows it
        while time.monotonic() < deadline:
            rt.memcpy(out.ctypes.data, x, 4096, rt.memcpyDeviceToHost)
        during = scrape(url)
    finally:
        gpupool.disconnect()
    assert value(during, "gpupool_sessions", device="0", transport="tcp") == 1
    tcp = {"device": "0", "transport": "tcp"}
    opens = value(during, "gpupool_session_opens_total", **tcp)
    assert opens == value(before, "gpupool_session_opens_total", **tcp) + 1
    assert value(during, "gpupool_gpu_memory_used_bytes", device="0") >= 2 * size
    assert value(during, "gpupool_gpu_memory_used_bytes", device="1") == 0

    def grew(name: str, **labels: str) -> float:
        return value(during, name, **labels) - value(before, name, **labels)

    assert grew("gpupool_copy_bytes_total", direction="htod", **tcp) >= 2 * size
    assert grew("gpupool_copy_bytes_total", direction="dtod", **tcp) == size
    assert grew("gpupool_copy_bytes_total", direction="dtoh", **tcp) >= size
    assert grew("gpupool_launches_total", **tcp) == 3
    assert grew("gpupool_array_ops_total", **tcp) >= 2  # arange, multiply, sum
    assert grew("gpupool_copy_bytes_total", direction="htod", device="0", transport="shm") == 0
    assert grew("gpupool_worker_busy_seconds_total", device="0") > 0
    assert 0 < value(during, "gpupool_gpu_utilization_ratio", device="0") <= 1
    assert value(during, "gpupool_gpu_utilization_ratio", device="1") == 0
    # h4's peer copies and collectives: the families exist (0 until they are used)
    assert value(during, "gpupool_peer_copy_bytes_total", device="0", direction="sent") == 0
    assert value(during, "gpupool_collective_bytes_total", device="0", op="all_reduce") == 0

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the session's end is seen by the front
        after = scrape(url)
        if value(after, "gpupool_sessions", **tcp) == 0:
            break
        time.sleep(0.05)
    assert value(after, "gpupool_sessions", **tcp) == 0
    assert value(after, "gpupool_gpu_memory_used_bytes", device="0") == 0
    # an ended worker's counts stay in the totals
    assert value(after, "gpupool_launches_total", **tcp) == value(
        during, "gpupool_launches_total", **tcp
    )
    assert value(after, "gpupool_worker_starts_total", device="0") > value(
        before, "gpupool_worker_starts_total", device="0"
    )


def test_refusals_and_crashes_are_counted(daemon: Daemon) -> None:
    assert daemon.metrics is not None
    url = daemon.metrics.url
    before = scrape(url)
    with grpc.insecure_channel(daemon.address) as channel:
        session = channel.stream_stream("/gpupool.v1.Daemon/Session")
        opening = pb.Request(open=pb.OpenSession(device=7), wait=True).SerializeToString()
        replies = list(session(iter([opening]), timeout=10))
    assert pb.Reply.FromString(replies[0]).error.name == "cudaErrorInvalidDevice"
    crashed = subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
            import gpupool
            from gpupool import runtime as rt
            gpupool.connect({daemon.address!r})
            kernel = gpupool.Module.from_source({ILLEGAL!r}).get_function("poke")
            kernel((1,), (32,), (0x10,))
            try:
                rt.deviceSynchronize()
            except gpupool.CUDARuntimeError as exc:
                print(exc.name)
            """),
        ],
        env=dict(os.environ, GPUPOOL_TRANSPORT="shm"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert crashed.stdout.split() == ["cudaErrorIllegalAddress"], crashed.stderr
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        after = scrape(url)
        if value(after, "gpupool_worker_crashes_total", device="0") > 0:
            break
        time.sleep(0.05)
    refused = {"transport": "grpc", "reason": "cudaErrorInvalidDevice"}
    refusals = value(after, "gpupool_session_refusals_total", **refused)
    assert refusals == value(before, "gpupool_session_refusals_total", **refused) + 1
    crashes = value(after, "gpupool_worker_crashes_total", device="0")
    assert crashes == value(before, "gpupool_worker_crashes_total", device="0") + 1
    shm = {"device": "0", "transport": "shm"}
    assert value(after, "gpupool_session_opens_total", **shm) == 1
    assert value(after, "gpupool_launches_total", **shm) == 0  # counted once done: it crashed


def test_probes_answer_on_the_metrics_port(daemon: Daemon) -> None:
    assert daemon.metrics is not None
    for path, body in (("/healthz", b"ok\n"), ("/readyz", b"ready\n")):
        with urllib.request.urlopen(daemon.metrics.url + path, timeout=10) as response:
            assert (response.status, response.read()) == (200, body)


def test_a_pool_and_its_scheduler_report_allocations_quotas_and_renewals(
    tmp_path: Path,
) -> None:
    scheduler = start_scheduler(
        "127.0.0.1:0",
        str(tmp_path / "pool.db"),
        SECRET,
        heartbeat_s=0.2,
        tick_s=0.05,
        metrics_listen="127.0.0.1:0",
    )
    assert scheduler.metrics is not None
    url = scheduler.metrics.url
    try:
        empty = scrape(url)
        assert value(empty, "gpupool_scheduler_nodes", state="up") == 0
        assert value(empty, "gpupool_scheduler_queue_length") == 0
        membership = PoolMembership(scheduler.address, "n1", SECRET)
        daemon = start_daemon(
            backend="emu",
            emu_devices=2,
            emu_memory=1 << 30,
            membership=membership,
            metrics_listen="127.0.0.1:0",
        )
        try:
            assert daemon.metrics is not None and daemon.registration is not None
            assert daemon.registration.registered.wait(30)
            _pool_workload(scheduler.address, url, daemon.metrics.url)
        finally:
            daemon.stop()
    finally:
        scheduler.stop()


def _pool_workload(scheduler: str, url: str, daemon_url: str) -> None:
    pool = scrape(url)
    assert value(pool, "gpupool_scheduler_nodes", state="up") == 1
    assert value(pool, "gpupool_scheduler_gpus", state="up") == 2
    assert value(pool, "gpupool_scheduler_capacity_gpus", state="free") == 2
    assert value(pool, "gpupool_scheduler_memory_bytes", state="total") == 2 << 30
    lease = allocate(scheduler, 1, memory=256 << 20, ttl=1.5)
    try:
        with pytest.raises(gpupool.AllocationError):
            allocate(scheduler, 3, fraction=1.0)  # can never fit
        gpupool.connect(lease=lease)
        try:
            ptr = rt.malloc(1 << 20)
            host = np.ones(1024, np.uint8)
            deadline = time.monotonic() + 1.5  # busy: the heartbeats carry the emulator's share
            while time.monotonic() < deadline:
                rt.memcpy(ptr, host.ctypes.data, host.nbytes, rt.memcpyHostToDevice)
                rt.memcpy(host.ctypes.data, ptr, host.nbytes, rt.memcpyDeviceToHost)
            held = scrape(url)
            on_daemon = scrape(daemon_url)
        finally:
            gpupool.disconnect()
        time.sleep(0.5)  # the lease thread renews every ttl/3
        renewed = scrape(url)
    finally:
        lease.release()
    assert value(held, "gpupool_scheduler_allocations") == 1
    assert value(held, "gpupool_scheduler_memory_bytes", state="allocated") == 256 << 20
    free = value(held, "gpupool_scheduler_capacity_gpus", state="free")
    assert free == pytest.approx(2 - 0.25)
    assert value(held, "gpupool_scheduler_allocate_requests_total", result="granted") == 1
    refused = {"result": "failed_precondition"}
    assert value(held, "gpupool_scheduler_allocate_requests_total", **refused) == 1
    assert value(renewed, "gpupool_scheduler_lease_renewals_total", result="renewed") >= 1
    device = next(
        index
        for index in ("0", "1")
        if value(on_daemon, "gpupool_sessions", device=index, transport="shm")
        + value(on_daemon, "gpupool_sessions", device=index, transport="tcp")
        + value(on_daemon, "gpupool_sessions", device=index, transport="grpc")
    )
    assert value(on_daemon, "gpupool_gpu_memory_quota_bytes", device=device) == 256 << 20
    assert value(held, "gpupool_scheduler_gpu_utilization_ratio", node="n1", gpu=device) > 0
    assert value(held, "gpupool_scheduler_gpu_memory_used_bytes", node="n1", gpu=device) >= 1 << 20
    ended = scrape(url)
    assert value(ended, "gpupool_scheduler_allocations") == 0
    assert value(ended, "gpupool_scheduler_allocations_ended_total", reason="released") == 1
    assert value(ended, "gpupool_scheduler_capacity_gpus", state="free") == 2


def test_scheduler_queue_expiry_and_team_usage_from_events() -> None:
    """The counts ``SchedulerMetrics.observe`` takes from the machine's answers, and each
    team's usage."""
    from gpupool.scheduler import state as sm
    from gpupool.scheduler.metrics import SchedulerMetrics

    machine = sm.SchedulerState(node_timeout=60.0)
    metrics = SchedulerMetrics(machine)  # teams: those of the callers' API tokens

    def apply(event: sm.Event) -> None:
        metrics.observe(event, machine.handle(event))

    sample = metrics.registry.get_sample_value
    apply(sm.Register(sm.Node("a", "a:1", (sm.Gpu(0, "u", "emu", 1 << 30),)), 0.0))
    apply(sm.Allocate(1, sm.Request(1, fraction=1.0, ttl=10.0, team="vision"), "1st", 0.0))
    waiting = sm.Request(1, fraction=0.5, ttl=10.0, wait=60.0, team="speech")
    apply(sm.Allocate(2, waiting, "2nd", 0.0))
    assert sample("gpupool_scheduler_queue_length") == 1
    assert sample("gpupool_scheduler_queued_requests_total") == 1
    assert sample("gpupool_scheduler_allocate_requests_total", {"result": "granted"}) == 1
    assert sample("gpupool_scheduler_team_allocated_gpus", {"team": "vision"}) == 1
    apply(sm.Tick(11.0))  # the first lease expires; the waiting request is granted
    assert sample("gpupool_scheduler_allocations_ended_total", {"reason": "expired"}) == 1
    assert sample("gpupool_scheduler_allocate_requests_total", {"result": "granted"}) == 2
    assert sample("gpupool_scheduler_queue_length") == 0
    assert sample("gpupool_scheduler_team_allocated_gpus", {"team": "vision"}) is None
    assert sample("gpupool_scheduler_team_allocated_gpus", {"team": "speech"}) == 0.5
    memory = sample("gpupool_scheduler_team_allocated_memory_bytes", {"team": "speech"})
    assert memory == 512 << 20
    apply(sm.Renew(3, "gone", 11.0))
    assert sample("gpupool_scheduler_lease_renewals_total", {"result": "not_found"}) == 1
    apply(sm.Allocate(4, sm.Request(1, fraction=1.0, ttl=10.0), "3rd", 11.0))  # no room now
    busy = {"result": "resource_exhausted"}
    assert sample("gpupool_scheduler_allocate_requests_total", busy) == 1
    apply(sm.Tick(100.0))  # the node fell silent
    assert sample("gpupool_scheduler_nodes", {"state": "down"}) == 1
    assert sample("gpupool_scheduler_node_downs_total") == 1


def test_a_metrics_port_in_use_is_a_clear_error(daemon: Daemon) -> None:
    assert daemon.metrics is not None
    taken = f"127.0.0.1:{daemon.metrics.port}"
    with pytest.raises(OSError, match=r"cannot serve metrics on 127\.0\.0\.1"):
        start_daemon(backend="emu", emu_devices=1, emu_memory=1 << 20, metrics_listen=taken)
    assert "gpupool_gpu_info" in names(scrape(daemon.metrics.url))  # the first one serves on


def test_the_schedulers_database_survives_a_restart(tmp_path: Path) -> None:
    """A rolling restart (the StatefulSet's): the new process on the same file has every
    allocation, and its metrics say so."""
    db = str(tmp_path / "pool.db")
    first = start_scheduler("127.0.0.1:0", db, SECRET, metrics_listen="127.0.0.1:0")
    try:
        membership = PoolMembership(first.address, "n1", SECRET)
        with start_daemon(
            backend="emu", emu_devices=1, emu_memory=1 << 30, membership=membership
        ) as daemon:
            assert daemon.registration is not None and daemon.registration.registered.wait(30)
            lease = allocate(first.address, 1, fraction=0.5, ttl=3600)
            lease.close()  # stop renewing; the allocation stays
    finally:
        first.stop()
    second = start_scheduler("127.0.0.1:0", db, SECRET, metrics_listen="127.0.0.1:0")
    try:
        assert second.metrics is not None
        after = scrape(second.metrics.url)
        assert value(after, "gpupool_scheduler_allocations") == 1
        assert value(after, "gpupool_scheduler_capacity_gpus", state="allocated") == 0.5
        assert value(after, "gpupool_scheduler_gpus", state="up") == 1
    finally:
        second.stop()


@pytest.mark.gpu
def test_a_gpu_daemon_reports_nvml_figures() -> None:
    try:
        daemon = start_daemon(backend="cupy", metrics_listen="127.0.0.1:0")
    except RuntimeError as exc:
        pytest.skip(f"no GPU here: {exc}")
    try:
        assert daemon.metrics is not None
        gpupool.connect(daemon.address)
        try:
            rt.malloc(256 << 20)
            during = scrape(daemon.metrics.url)
        finally:
            gpupool.disconnect()
        total = value(during, "gpupool_gpu_memory_total_bytes", device="0")
        used = value(during, "gpupool_gpu_memory_used_bytes", device="0")
        assert 256 << 20 <= used <= total  # NVML's figure: every process's memory on the GPU
        assert 0 <= value(during, "gpupool_gpu_utilization_ratio", device="0") <= 1
    finally:
        daemon.stop()


def test_a_workers_row_counts_into_its_transports_totals_and_stays_after_it_ends() -> None:
    block = DeviceCounters(4)
    try:
        rows = [SlotCounters.attach(os.dup(block.fileno()), slot) for slot in (1, 2)]
        block.assign(1, "tcp")
        block.assign(2, "shm")
        rows[0].copied(Cell.HTOD_BYTES, 100)
        rows[0].launched()
        rows[1].peer_copied("sent", 7)
        rows[1].collective("all_reduce", 64)
        with pytest.raises(ValueError, match="sent or received"):
            rows[1].peer_copied("sideways", 1)
        with pytest.raises(ValueError, match="unknown collective 'scan'"):
            rows[1].collective("scan", 1)
        totals = block.totals()
        assert totals["tcp"][Cell.HTOD_BYTES] == 100 and totals["tcp"][Cell.LAUNCHES] == 1
        assert totals["shm"][Cell.PEER_SENT_BYTES] == 7
        assert totals["shm"][Cell.COLLECTIVE_BYTES + COLLECTIVES.index("all_reduce")] == 64
        block.retire(1)  # its worker ended: the row is cleared, its counts stay
        block.assign(1, "grpc")  # the slot's next worker
        rows[0].launched()
        totals = block.totals()
        assert totals["tcp"][Cell.LAUNCHES] == 1 and totals["grpc"][Cell.LAUNCHES] == 1
        for row in rows:
            row.close()
    finally:
        block.close()


@pytest.mark.usefixtures("unconfined_workers")  # a confined worker cannot dial a peer link yet
def test_peer_copies_and_collectives_are_counted_on_both_devices() -> None:
    from gpupool.cupy.cuda import nccl

    daemon = start_daemon(
        backend="emu", emu_devices=2, emu_memory=1 << 30, metrics_listen="127.0.0.1:0"
    )
    try:
        assert daemon.metrics is not None
        before = scrape(daemon.metrics.url)
        gpupool.connect(daemon.address)
        try:
            size = 1 << 20
            host = np.arange(size // 4, dtype=np.float32)
            pointers = []
            for device in range(2):
                rt.setDevice(device)
                pointers.append(rt.malloc(size))
            rt.memcpy(pointers[0], host.ctypes.data, size, rt.memcpyHostToDevice)
            rt.memcpyPeer(pointers[1], 1, pointers[0], 0, size)
            comms = nccl.NcclCommunicator.initAll(2)
            nccl.groupStart()
            for device, comm in enumerate(comms):
                rt.setDevice(device)
                comm.allReduce(pointers[device], pointers[device], size // 4, 7, 0, 0)
            nccl.groupEnd()
            out = np.empty_like(host)
            rt.setDevice(1)
            rt.memcpy(out.ctypes.data, pointers[1], size, rt.memcpyDeviceToHost)
            assert np.array_equal(out, 2 * host)
            during = scrape(daemon.metrics.url)
        finally:
            gpupool.disconnect()
    finally:
        daemon.stop()

    def grew(name: str, **labels: str) -> float:
        return value(during, name, **labels) - value(before, name, **labels)

    assert grew("gpupool_peer_copy_bytes_total", device="0", direction="sent") == size
    assert grew("gpupool_peer_copy_bytes_total", device="1", direction="received") == size
    for device in ("0", "1"):  # a ring of two: each rank sends half, then the reduced half
        assert grew("gpupool_collective_bytes_total", device=device, op="all_reduce") == size
