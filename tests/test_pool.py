"""The pool end to end on loopback: a scheduler, two emulated daemons of two 8 GiB devices each,
and the ``gpupool`` commands a user runs against them.

The emulator reserves memory lazily, so 8 GiB devices cost nothing until written.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

import gpupool
from gpupool import grants
from gpupool import runtime as rt
from gpupool.client.context import DaemonLinks
from gpupool.client.lease import Lease, SchedulerClient, allocate
from gpupool.client.session import Session
from gpupool.errors import AllocationError, ConnectionLost, CUDARuntimeError
from gpupool.proto import gpupool_pb2 as pb
from gpupool.proto import gpupool_pb2_grpc as pb_grpc
from gpupool.proto import scheduler_pb2 as spb
from gpupool.proto import scheduler_pb2_grpc as spb_grpc
from gpupool.proto.limits import GRPC_OPTIONS
from gpupool.scheduler.service import Scheduler, start_scheduler
from gpupool.server.daemon import Daemon, PoolMembership, start_daemon
from tests.conftest import GPUPOOL

GiB = 1 << 30
SECRET = b"test-cluster-secret-0123456789"
FAST = {"node_timeout": 2.0, "heartbeat_s": 0.2, "tick_s": 0.1}

# An unmodified CuPy program (gpupool run loads the shim for `import cupy`): prints the devices
# it sees, then tries to allocate past its 4 GiB quota.
PROG = """
import cupy as cp
from gpupool.client.context import current
n = cp.cuda.runtime.getDeviceCount()
print("devices", n)
for i in range(n):
    with cp.cuda.Device(i) as device:
        print("device", i, current().device(i).address,
              cp.cuda.runtime.getDeviceProperties(i)["totalGlobalMem"], device.mem_info[1])
with cp.cuda.Device(n - 1):
    held = cp.empty(3 << 30, dtype=cp.uint8)
    try:
        cp.empty(2 << 30, dtype=cp.uint8)
    except cp.cuda.memory.OutOfMemoryError as exc:
        print("past the quota:", type(exc).__name__)
"""


@pytest.fixture(scope="module")
def secret_env() -> Iterator[None]:
    """Subprocesses (daemons, clients) and this process share the cluster secret."""
    previous = os.environ.get(grants.ENV_SECRET)
    os.environ[grants.ENV_SECRET] = SECRET.decode()
    yield
    if previous is None:
        del os.environ[grants.ENV_SECRET]
    else:
        os.environ[grants.ENV_SECRET] = previous


def join(scheduler: Scheduler, name: str, devices: int = 2, memory: int = 8 * GiB) -> Daemon:
    daemon = start_daemon(
        backend="emu",
        emu_devices=devices,
        emu_memory=memory,
        log_level="warning",
        membership=PoolMembership(scheduler.address, name, SECRET),
    )
    assert daemon.registration is not None
    assert daemon.registration.registered.wait(10)
    return daemon


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory, secret_env: None) -> Iterator[Scheduler]:
    """A scheduler with nodes a and b, two 8 GiB emulated devices each."""
    db = tmp_path_factory.mktemp("pool") / "scheduler.db"
    scheduler = start_scheduler("127.0.0.1:0", str(db), SECRET, **FAST)
    daemons = [join(scheduler, "a"), join(scheduler, "b")]
    yield scheduler
    for daemon in daemons:
        daemon.stop()
    scheduler.stop()


def state(scheduler: Scheduler) -> spb.PoolState:
    client = SchedulerClient(scheduler.address)
    try:
        return client.pool()
    finally:
        client.close()


def answers(scheduler: Scheduler) -> bool:
    """True once this process's gRPC reaches ``scheduler`` (channels to one address share
    their connection, which backs off for a while after the scheduler was away)."""
    try:
        state(scheduler)
    except AllocationError:
        return False
    return True


def eventually(check: Callable[[], bool], within: float) -> float:
    """Seconds until ``check()`` holds; fails after ``within`` seconds."""
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < within, "did not happen in time"
        time.sleep(0.05)
    return time.monotonic() - start


def pool_is_free(scheduler: Scheduler) -> bool:
    now = state(scheduler)
    return not now.allocations and all(gpu.fraction_free == 1.0 for gpu in now.gpus)


def gpupool_cli(
    *argv: str, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a ``gpupool`` command with ``env`` added to this environment."""
    return subprocess.run(
        [*GPUPOOL, *argv],
        env={**os.environ, "COLUMNS": "200", **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def holding(argv: list[str], program: str, **popen: object) -> subprocess.Popen[str]:
    """``gpupool ARGV -- python -c PROGRAM`` running, its output a pipe."""
    return subprocess.Popen(  # type: ignore[call-overload, no-any-return]
        [*GPUPOOL, *argv, "--", sys.executable, "-c", program],
        stdout=subprocess.PIPE,
        text=True,
        **popen,
    )


# Holds 1 GiB on its last device, says so, then waits for a line on stdin.
HOLD = (
    "import gpupool.runtime as rt, sys; rt.setDevice(rt.getDeviceCount() - 1);"
    " rt.malloc(1 << 30); print('ready', flush=True); sys.stdin.readline()"
)


def test_list_shows_the_four_gpus(pool: Scheduler) -> None:
    result = gpupool_cli("list", "--scheduler", pool.address)
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if "gpupool CPU emulator" in line]
    assert len(rows) == 4, result.stdout
    assert sum(" a " in row for row in rows) == 2 and sum(" b " in row for row in rows) == 2
    assert all("0 / 8GiB" in row and "1.00" in row and "up" in row for row in rows)


def test_run_sees_four_half_gpus_over_both_nodes_and_no_more_memory(
    pool: Scheduler, tmp_path: Path
) -> None:
    prog = tmp_path / "prog.py"
    prog.write_text(textwrap.dedent(PROG))
    env = {"GPUPOOL_SCHEDULER": pool.address}
    result = gpupool_cli(
        "run", "-n", "4", "--fraction", "0.5", "--", sys.executable, str(prog), env=env
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "devices 4"
    devices = [line.split() for line in lines[1:5]]
    assert {int(d[3]) for d in devices} == {int(d[4]) for d in devices} == {4 * GiB}
    assert len({d[2] for d in devices}) == 2  # two daemons
    assert lines[5] == "past the quota: OutOfMemoryError"
    eventually(lambda: pool_is_free(pool), within=2)


def test_two_half_runs_fit_at_once_and_a_third_is_told_why(pool: Scheduler) -> None:
    argv = ["run", "-n", "4", "--fraction", "0.5", "--scheduler", pool.address]
    runs = [holding(argv, HOLD, stdin=subprocess.PIPE) for _ in range(2)]
    try:
        for run in runs:
            assert run.stdout is not None and run.stdout.readline() == "ready\n"
        assert all(gpu.fraction_free == 0 for gpu in state(pool).gpus)
        third = gpupool_cli(
            "run", "-n", "4", "--fraction", "0.5", "--scheduler", pool.address, "--", "true"
        )
        assert third.returncode == 1
        assert "cannot fit now: 4 GPUs x 0.5 asked, and 0 of the 4 GPUs up have 0.5 free" in (
            third.stderr
        )
        smi = gpupool_cli("smi", "--scheduler", pool.address)
        assert smi.returncode == 0, smi.stderr
        assert smi.stdout.count(" x 0.5 (4GiB)") == 8  # two leases of four halves
    finally:
        for run in runs:
            run.communicate("\n", timeout=30)
    assert [run.returncode for run in runs] == [0, 0]
    eventually(lambda: pool_is_free(pool), within=2)


def test_a_killed_clients_short_lease_is_freed_with_its_memory(pool: Scheduler) -> None:
    argv = ["run", "-n", "1", "--ttl", "2", "--scheduler", pool.address]
    run = holding(argv, HOLD, stdin=subprocess.PIPE, start_new_session=True)
    assert run.stdout is not None and run.stdout.readline() == "ready\n"
    held = [gpu for gpu in state(pool).gpus if gpu.allocations]
    assert len(held) == 1
    eventually(lambda: _memory_used(pool, held[0]) == GiB, within=2)  # heartbeat figures
    os.killpg(run.pid, signal.SIGKILL)
    run.communicate(timeout=10)
    freed_in = eventually(lambda: pool_is_free(pool), within=2 + 3)
    assert _memory_used(pool, held[0]) == 0
    assert freed_in > 1.0  # the lease ran out, not released by a client that got away


def _memory_used(scheduler: Scheduler, gpu: spb.PoolGpu) -> int:
    for now in state(scheduler).gpus:
        if (now.node, now.index) == (gpu.node, gpu.index):
            return now.memory_used
    raise AssertionError("GPU gone")


def test_a_released_lease_ends_its_sessions_and_their_memory(pool: Scheduler) -> None:
    lease = allocate(pool.address, 1, memory=2 * GiB, ttl=30)
    gpupool.connect(lease=lease)
    try:
        rt.malloc(GiB)
        assert rt.memGetInfo() == (GiB, 2 * GiB)
        gpu = next(g for g in state(pool).gpus if g.allocations)
        eventually(lambda: _memory_used(pool, gpu) == GiB, within=2)
        other = SchedulerClient(pool.address)  # released elsewhere (`gpupool release ID`)
        other.release(lease.id)
        other.close()
        with pytest.raises(CUDARuntimeError, match="was released or has expired") as told:
            eventually(lambda: rt.memGetInfo() is None, within=3)  # the daemon says why
        assert told.value.name == "cudaErrorNotPermitted" and lease.id in str(told.value)
        with pytest.raises(ConnectionLost):  # and the session is over
            rt.memGetInfo()
        eventually(lambda: _memory_used(pool, gpu) == 0, within=2)
    finally:
        gpupool.disconnect()
        lease.close()


def test_releasing_a_lease_in_process_detaches_its_gpus(pool: Scheduler) -> None:
    lease = allocate(pool.address, 1, memory=2 * GiB, ttl=30)
    gpupool.connect(lease=lease)
    try:
        rt.malloc(GiB)
        gpu = next(g for g in state(pool).gpus if g.allocations)
        eventually(lambda: _memory_used(pool, gpu) == GiB, within=2)
        lease.release()
        with pytest.raises(CUDARuntimeError, match="cudaErrorInvalidDevice: device 0 was detached"):
            rt.memGetInfo()
        eventually(lambda: _memory_used(pool, gpu) == 0, within=2)
    finally:
        gpupool.disconnect()


def test_request_prints_the_id_and_the_environment_then_release_frees(pool: Scheduler) -> None:
    result = gpupool_cli(
        "request", "-n", "2", "--memory", "1GiB", "--policy", "spread", "--scheduler", pool.address
    )
    assert result.returncode == 0, result.stderr
    allocation_id, export = result.stdout.splitlines()
    assert export == f"export GPUPOOL_ALLOCATION={pool.address}/{allocation_id}"
    variable, value = export.removeprefix("export ").split("=", 1)
    program = subprocess.run(
        [
            sys.executable,
            "-c",
            "import gpupool.runtime as rt; print(rt.getDeviceCount(), rt.memGetInfo())",
        ],
        env=os.environ | {variable: value},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert program.stdout.split(None, 1) == ["2", f"({GiB}, {GiB})\n"], program.stderr
    (listed,) = state(pool).allocations
    assert {gpu.node for gpu in listed.gpus} == {"a", "b"}  # spread
    assert listed.id == allocation_id[:8] and not any(gpu.grant for gpu in listed.gpus)
    with pytest.raises(AllocationError, match="no allocation"):
        SchedulerClient(pool.address).renew(listed.id)  # a listing gives no capability
    released = gpupool_cli("release", allocation_id, "--scheduler", pool.address)
    assert released.returncode == 0 and allocation_id in released.stdout
    again = gpupool_cli("release", allocation_id, "--scheduler", pool.address)
    assert again.returncode == 1 and "released or its lease expired" in again.stderr
    assert pool_is_free(pool)


def test_a_waiting_request_gets_the_gpus_once_they_are_released(pool: Scheduler) -> None:
    whole = allocate(pool.address, 4)
    start = time.monotonic()
    waiter = subprocess.Popen(
        [*GPUPOOL, "request", "-n", "1", "--wait", "20", "--scheduler", pool.address],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(1.0)
    assert waiter.poll() is None  # waiting in the queue
    whole.release()
    out, err = waiter.communicate(timeout=20)
    assert waiter.returncode == 0, err
    assert 1.0 < time.monotonic() - start < 10
    SchedulerClient(pool.address).release(out.split()[0])
    with pytest.raises(AllocationError, match="can never fit: 5 GPUs x 1 asked") as never:
        allocate(pool.address, 5, wait=30)
    assert never.value.code == "FAILED_PRECONDITION"


@pytest.mark.parametrize("transport", ["grpc", "tcp", "shm"])
def test_sessions_without_a_genuine_unexpired_grant_are_refused(
    pool: Scheduler, transport: str
) -> None:
    """Every transport opens its sessions through the same admission."""
    lease = allocate(pool.address, 1, fraction=0.5, ttl=30)
    placement = lease.placements[0]
    genuine = grants.read(placement.grant)  # a live allocation: heartbeats leave it be
    channel = grpc.insecure_channel(placement.address, GRPC_OPTIONS)
    info = pb_grpc.DaemonStub(channel).GetInfo(pb.InfoRequest(), timeout=10)
    daemon = DaemonLinks(placement.address, channel, info)
    other = "b" if genuine.node == "a" else "a"
    cases = {
        "": "needs a grant",
        grants.sign(genuine, b"not-the-cluster-secret!"): "signature does not match",
        placement.grant[:-4] + ("AAAA" if not placement.grant.endswith("AAAA") else "BBBB"): (
            "signature does not match"
        ),
        grants.sign(dataclasses.replace(genuine, expires_at=time.time() - 1), SECRET): "expired",
        grants.sign(dataclasses.replace(genuine, node=other), SECRET): f"node '{other}'",
    }
    try:
        for token, why in cases.items():
            with pytest.raises(CUDARuntimeError, match=why) as refused:
                Session(daemon.open(transport, 10), placement.index, token=token)
            assert refused.value.name == "cudaErrorNotPermitted"
        opened = Session(daemon.open(transport, 10), placement.index, token=placement.grant)
        assert daemon.transport == transport
        assert opened.properties.total_memory == GiB * 4  # the genuine one opens: half of 8 GiB
        opened.close()
    finally:
        channel.close()
        lease.release()


def test_scheduler_restart_keeps_allocations_and_nodes_come_and_go(
    tmp_path: Path, secret_env: None
) -> None:
    db = str(tmp_path / "scheduler.db")
    scheduler = start_scheduler("127.0.0.1:0", db, SECRET, **FAST)
    port = scheduler.port
    daemon = join(scheduler, "solo", devices=1, memory=GiB)
    try:
        lease = allocate(scheduler.address, 1, fraction=0.5, ttl=30)
        gpupool.connect(lease=lease)
        ptr = rt.malloc(1024)
        scheduler.stop()
        scheduler = start_scheduler(f"127.0.0.1:{port}", db, SECRET, **FAST)
        eventually(lambda: answers(scheduler), within=5)  # past gRPC's reconnection backoff
        restored = state(scheduler)
        assert [a.id for a in restored.allocations] == [lease.id[:8]]
        assert restored.gpus[0].fraction_free == 0.5
        lease.renew()  # the lease goes on, and so does its session
        rt.memset(ptr, 1, 1024)
        rt.deviceSynchronize()
        # the daemon restarts under the same name: the same GPU, not a second one
        daemon.stop()
        eventually(lambda: not state(scheduler).gpus[0].up, within=2 + 2)
        with pytest.raises(AllocationError, match="down: solo"):
            allocate(scheduler.address, 1, fraction=0.5)
        daemon = join(scheduler, "solo", devices=1, memory=GiB)
        assert len(state(scheduler).gpus) == 1 and state(scheduler).gpus[0].up
        lease.release()
    finally:
        gpupool.disconnect()
        daemon.stop()
        scheduler.stop()


def test_run_keeps_its_commands_status_when_the_release_cannot_reach_the_scheduler(
    tmp_path: Path, secret_env: None
) -> None:
    scheduler = start_scheduler("127.0.0.1:0", str(tmp_path / "db"), SECRET, **FAST)
    daemon = join(scheduler, "lone", devices=1, memory=GiB)
    try:
        argv = ["run", "-n", "1", "--ttl", "30", "--scheduler", scheduler.address]
        run = holding(argv, HOLD, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
        assert run.stdout is not None and run.stdout.readline() == "ready\n"
        scheduler.stop()  # away when the command ends
        _, err = run.communicate("\n", timeout=30)
        assert run.returncode == 0, err  # the command's status, not the release's failure
        assert "not released (the scheduler at" in err and "ends on its own within 30 s" in err
    finally:
        daemon.stop()
        scheduler.stop()


def test_pool_commands_need_a_secret_and_a_scheduler(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(grants.ENV_SECRET, raising=False)
    monkeypatch.delenv("GPUPOOL_SCHEDULER", raising=False)
    daemon = gpupool_cli("daemon", "--backend", "emu", "--scheduler", "127.0.0.1:1")
    assert daemon.returncode == 1
    assert "no cluster secret" in daemon.stderr
    listing = gpupool_cli("list")
    assert listing.returncode == 1
    assert "no scheduler: pass --scheduler HOST:PORT or set GPUPOOL_SCHEDULER" in listing.stderr
    away = gpupool_cli("request", "--scheduler", "127.0.0.1:1")
    assert away.returncode == 1 and "does not answer" in away.stderr


def test_a_node_that_would_break_placement_is_refused_and_the_pool_goes_on(
    pool: Scheduler,
) -> None:
    bad = spb.NodeRegistration(
        name="nan",
        address="127.0.0.1:1",
        oversubscription=float("nan"),
        gpus=[spb.GpuInfo()],
    )
    grants.prove("register", bad, "nan", SECRET, time.time())
    channel = grpc.insecure_channel(pool.address, GRPC_OPTIONS)
    try:
        with pytest.raises(grpc.RpcError) as refused:
            spb_grpc.SchedulerStub(channel).Register(bad, timeout=10)
    finally:
        channel.close()
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "at least 1, not nan" in (refused.value.details() or "")
    with allocate(pool.address, 1, fraction=0.5) as lease:  # the pool still places requests
        assert len(lease.placements) == 1
    daemon = gpupool_cli("daemon", "--oversubscribe", "nan")
    assert daemon.returncode == 2 and "a factor is a number of at least 1" in daemon.stderr


def test_a_second_daemon_with_a_nodes_name_is_refused_and_says_why(pool: Scheduler) -> None:
    impostor = start_daemon(
        backend="emu",
        emu_devices=1,
        log_level="warning",
        membership=PoolMembership(pool.address, "a", SECRET),
    )
    try:
        assert impostor.registration is not None
        eventually(
            lambda: impostor.registration is not None and impostor.registration.refused != "",
            within=10,
        )
        assert "node 'a' is registered from" in impostor.registration.refused
        assert "another --name" in impostor.registration.refused
        assert not impostor.registration.registered.is_set()
        gpus = [gpu for gpu in state(pool).gpus if gpu.node == "a"]
        assert len(gpus) == 2 and gpus[0].address != impostor.address  # a is as it was
    finally:
        impostor.stop()


def test_only_nodes_with_the_cluster_secret_register_or_hear_allocation_ids(
    pool: Scheduler,
) -> None:
    with allocate(pool.address, 1, fraction=0.25) as lease:
        node = lease.placements[0].node
        channel = grpc.insecure_channel(pool.address, GRPC_OPTIONS)
        stub = spb_grpc.SchedulerStub(channel)
        messages = {
            "register": spb.NodeRegistration(name=node, address="127.0.0.1:1"),
            "heartbeat": spb.NodeHeartbeat(name=node),
        }
        calls = {"register": stub.Register, "heartbeat": stub.Heartbeat}

        def signed(call: str, secret: bytes) -> Any:
            message = type(messages[call])()
            message.CopyFrom(messages[call])
            grants.prove(call, message, node, secret, time.time())
            return message

        try:
            for call, send in calls.items():
                unproven = messages[call]
                for message in (unproven, signed(call, b"not-the-cluster-secret!")):
                    with pytest.raises(grpc.RpcError) as refused:
                        send(message, timeout=10)
                    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
                    assert "cluster secret" in (refused.value.details() or "")
            reply = calls["heartbeat"](signed("heartbeat", SECRET), timeout=10)
            assert lease.id in reply.live_allocations  # the genuine node hears them
        finally:
            channel.close()
        assert state(pool).allocations[0].gpus[0].address == lease.placements[0].address
    outsider = start_daemon(
        backend="emu",
        emu_devices=1,
        log_level="warning",
        membership=PoolMembership(pool.address, "outsider", b"another-cluster-secret"),
    )
    try:
        assert outsider.registration is not None
        eventually(lambda: "cluster secret" in outsider.registration.refused, within=10)  # type: ignore[union-attr]
        assert "outsider" not in {gpu.node for gpu in state(pool).gpus}
    finally:
        outsider.stop()


def test_a_failed_renewal_says_why_in_its_message() -> None:
    """A program that configures no logging sees only a warning's message: it has the reason."""
    messages: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("gpupool.client.lease")
    logger.addHandler(handler)
    lease = Lease(SchedulerClient("127.0.0.1:1"), spb.Allocation(id="gone", ttl_s=0.3))
    try:
        eventually(lambda: bool(messages), within=10)
    finally:
        lease.close()
        logger.removeHandler(handler)
    assert messages[0].startswith("lease not renewed: the scheduler at 127.0.0.1:1 does not answer")


def test_run_uses_the_allocation_in_the_environment_unless_daemons_are_named(
    pool: Scheduler,
) -> None:
    show = (
        "import os, gpupool.runtime as rt;"
        " print(rt.getDeviceCount(), os.environ.get('GPUPOOL_DAEMONS') or '-')"
    )
    with allocate(pool.address, 3, fraction=0.25) as lease:
        env = {"GPUPOOL_ALLOCATION": lease.env_value, "GPUPOOL_DAEMONS": ""}
        held = gpupool_cli("run", "--", sys.executable, "-c", show, env=env)
        assert held.stdout.split() == ["3", "-"], held.stderr  # no embedded daemon started
        address = next(gpu.address for gpu in state(pool).gpus if gpu.node == "b")
        named = gpupool_cli("run", "--daemons", address, "--", sys.executable, "-c", show, env=env)
        assert named.stdout.split() == ["2", address], named.stderr  # the daemon named wins


def test_run_refuses_daemons_and_an_allocation_together() -> None:
    both = gpupool_cli("run", "-n", "2", "--daemons", "127.0.0.1:1", "--", "true")
    assert both.returncode == 2
    assert "--daemons names the daemons to use" in both.stderr and "one or the other" in both.stderr


def test_allocation_errors_are_part_of_the_api() -> None:
    assert gpupool.AllocationError is AllocationError and "AllocationError" in gpupool.__all__
    assert issubclass(gpupool.AllocationError, gpupool.GpupoolError)


# Sees its quota as the device's memory, cannot allocate past it, holds most of it.
TENANT = """
import sys, gpupool, gpupool.runtime as rt
free, total = rt.memGetInfo()
print(total, rt.getDeviceProperties(0)["totalGlobalMem"], flush=True)
try:
    rt.malloc(total + (1 << 20))
except gpupool.CUDARuntimeError as exc:
    print(exc.name, flush=True)
rt.malloc(total - (64 << 20))
print("ready", flush=True)
sys.stdin.readline()
"""


@pytest.mark.gpu
def test_two_half_tenants_share_one_gpu_each_within_half_its_memory(
    tmp_path: Path, secret_env: None
) -> None:
    scheduler = start_scheduler("127.0.0.1:0", str(tmp_path / "db"), SECRET, **FAST)
    try:
        pooled = PoolMembership(scheduler.address, "gpu", SECRET)
        daemon = start_daemon(backend="cupy", log_level="warning", membership=pooled)
    except RuntimeError as exc:
        scheduler.stop()
        pytest.skip(f"no GPU here: {exc}")
    try:
        assert daemon.registration is not None and daemon.registration.registered.wait(30)
        gpu = state(scheduler).gpus[0]
        argv = ["run", "-n", "1", "--fraction", "0.5", "--scheduler", scheduler.address]
        tenants = [holding(argv, TENANT, stdin=subprocess.PIPE) for _ in range(2)]
        try:
            for tenant in tenants:
                assert tenant.stdout is not None
                seen = [tenant.stdout.readline().split() for _ in range(3)]
                assert seen[1:] == [["cudaErrorMemoryAllocation"], ["ready"]], seen
                total, properties_total = map(int, seen[0])
                # half the GPU, less the tenant's own CUDA context (which its share holds)
                assert total == properties_total
                assert gpu.memory // 2 - (2 << 30) < total < gpu.memory // 2
            assert state(scheduler).gpus[0].fraction_free == 0
        finally:
            for tenant in tenants:
                tenant.communicate("\n", timeout=60)
    finally:
        daemon.stop()
        scheduler.stop()


def test_run_without_a_scheduler_allocates_from_an_embedded_pool(tmp_path: Path) -> None:
    """The embedded default: a scheduler and a daemon of this host, started for the command."""
    prog = tmp_path / "prog.py"
    prog.write_text(textwrap.dedent(PROG))
    env = {k: v for k, v in os.environ.items() if k not in ("GPUPOOL_SCHEDULER", grants.ENV_SECRET)}
    env["GPUPOOL_TOKEN"] = "gpt_0123_of-another-pool"  # its own open pool does not use it
    result = subprocess.run(
        [
            *GPUPOOL,
            "run",
            "-n",
            "2",
            "--fraction",
            "0.5",
            "--backend",
            "emu",
            "--",
            sys.executable,
            str(prog),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "devices 2"
    assert all(line.split()[-2:] == [str(4 * GiB)] * 2 for line in lines[1:3])
    assert lines[3] == "past the quota: OutOfMemoryError"
