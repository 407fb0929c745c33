"""The standing hostile suite, scheduler part: faults. A real ``gpupool scheduler`` process is
killed (SIGKILL) while clients allocate and release, and restarted on its state file:
nothing it acknowledged is lost, nothing released comes back, no GPU is over-booked. Rows
in the state file that a live request could not have made (a NaN time-to-live, an expiry in
1e308) are left out at the restart. Each prints what it tried and what survived.

(A daemon's heartbeat captured and replayed: tests/test_scheduler_security.py.)
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import grpc
import pytest

from gpupool import grants
from gpupool.proto import scheduler_pb2 as spb
from gpupool.proto import scheduler_pb2_grpc as spb_grpc
from gpupool.proto.limits import GRPC_OPTIONS
from tests.conftest import GPUPOOL

SECRET = "faults-test-secret-0123456789"
GiB = 1 << 30
GPUS = 4


class SchedulerProcess:
    """``gpupool scheduler`` on loopback, as an operator runs it."""

    def __init__(self, db: Path, port: int = 0, *options: str) -> None:
        self.process = subprocess.Popen(
            [*GPUPOOL, "scheduler", "--listen", f"127.0.0.1:{port}", "--db", str(db), *options],
            env={**os.environ, grants.ENV_SECRET: SECRET},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()  # "gpupool scheduler on 127.0.0.1:PORT (...)"
        assert line.startswith("gpupool scheduler on"), line + self.process.stderr.read()
        self.said = line
        self.address = line.split()[3]
        self.port = int(self.address.rpartition(":")[2])

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.communicate(timeout=10)

    def stop(self) -> str:
        """Stop it (SIGTERM) and return what it logged."""
        if self.process.poll() is None:
            self.process.terminate()
        _, err = self.process.communicate(timeout=20)
        return err


def stub(address: str) -> tuple[grpc.Channel, spb_grpc.SchedulerStub]:
    channel = grpc.insecure_channel(address, GRPC_OPTIONS)
    return channel, spb_grpc.SchedulerStub(channel)


def register(scheduler: spb_grpc.SchedulerStub) -> None:
    node = spb.NodeRegistration(
        name="f",
        address="127.0.0.1:1",
        backend="emu",
        gpus=[spb.GpuInfo(index=i, uuid=f"u{i}", name="emu", memory=8 * GiB) for i in range(GPUS)],
    )
    grants.prove("register", node, "f", SECRET.encode(), time.time())
    scheduler.Register(node, timeout=10, wait_for_ready=True)


@pytest.mark.timeout(120)
def test_a_scheduler_killed_mid_allocation_loses_nothing_it_acknowledged(tmp_path: Path) -> None:
    db = tmp_path / "scheduler.db"
    scheduler = SchedulerProcess(db)
    channel, calls = stub(scheduler.address)
    register(calls)
    held: dict[str, float] = {}  # acknowledged and not released: id -> fraction
    released: set[str] = set()  # acknowledged released
    lock = threading.Lock()
    stopping = threading.Event()
    tried = {"allocate": 0, "release": 0, "failed": 0}

    def client(seed: int) -> None:
        mine: list[str] = []
        while not stopping.is_set():
            fraction = 0.05 + 0.05 * ((seed + len(mine)) % 4)
            try:
                with lock:
                    tried["allocate"] += 1
                request = spb.AllocationRequest(count=1, fraction=fraction, ttl_s=600)
                allocation = calls.Allocate(request, timeout=5)
                with lock:
                    held[allocation.id] = fraction
                mine.append(allocation.id)
                if len(mine) > 3:
                    gone = mine.pop(0)
                    with lock:
                        tried["release"] += 1
                        held.pop(gone)  # in flight: gone or not, as the kill falls
                    calls.Release(spb.LeaseRef(id=gone), timeout=5)
                    with lock:
                        released.add(gone)
            except grpc.RpcError:  # the scheduler is gone: its answer never came
                with lock:
                    tried["failed"] += 1
                return

    clients = [threading.Thread(target=client, args=(seed,)) for seed in range(4)]
    for each in clients:
        each.start()
    time.sleep(1.5)
    scheduler.kill()  # mid-allocation: calls are in flight
    stopping.set()
    for each in clients:
        each.join(30)
    channel.close()
    assert len(held) >= 4 and released, tried  # the clients got somewhere before the kill
    restarted = SchedulerProcess(db, scheduler.port)
    channel, calls = stub(restarted.address)
    try:
        state = calls.Pool(spb.PoolRequest(), timeout=10, wait_for_ready=True)
        listed = {allocation.id for allocation in state.allocations}  # public ids: 8 characters
        lost = [a for a in held if a[:8] not in listed]
        back = [a for a in released if a[:8] in listed]
        assert not lost and not back, (lost, back)
        for allocation_id in held:  # the whole ids still renew: the leases go on
            calls.Renew(spb.LeaseRef(id=allocation_id), timeout=10)
        assert all(gpu.fraction_free >= 0 for gpu in state.gpus) and len(state.gpus) == GPUS
        booked = sum(gpu.fraction for a in state.allocations for gpu in a.gpus)
        assert booked <= GPUS + 1e-9
        print(
            f"tried: 4 clients, {tried['allocate']} allocations and {tried['release']} releases,"
            f" SIGKILL at 1.5 s ({tried['failed']} calls cut off); survived: all {len(held)}"
            f" acknowledged allocations back and renewable, none of {len(released)} released"
            f" ones back, {len(state.allocations) - len(held)} granted or released as the kill"
            f" fell (their callers never heard; they run out), {booked:.2f} of {GPUS} GPUs"
            " booked"
        )
    finally:
        channel.close()
        restarted.stop()


def test_rows_a_live_request_could_not_have_made_are_left_out_at_restart(tmp_path: Path) -> None:
    db = tmp_path / "scheduler.db"
    scheduler = SchedulerProcess(db)
    channel, calls = stub(scheduler.address)
    register(calls)
    kept = calls.Allocate(spb.AllocationRequest(count=1, fraction=0.5, ttl_s=60), timeout=10)
    channel.close()
    scheduler.stop()
    with sqlite3.connect(db) as rows:  # what an older version or a hand edit left behind
        (doc,) = rows.execute("select doc from allocations").fetchone()
        bad = {
            "nan-ttl": {"ttl": float("nan")},
            "forever": {"ttl": 1e308},
            "nothing": {"slices": [{**json.loads(doc)["slices"][0], "units": 0, "memory": 0}]},
        }
        for key, change in bad.items():
            rows.execute(
                "insert into allocations values (?, ?)",
                (key, json.dumps({**json.loads(doc), "id": key, **change})),
            )
        rows.execute("insert into allocations values ('garbage', 'not json')")
    restarted = SchedulerProcess(db, scheduler.port)
    channel, calls = stub(restarted.address)
    try:
        state = calls.Pool(spb.PoolRequest(), timeout=10, wait_for_ready=True)
        assert [a.id for a in state.allocations] == [kept.id[:8]]
        assert state.allocations[0].expires_at <= time.time() + 60 + 1
    finally:
        channel.close()
        logged = restarted.stop()
    for key in bad:
        assert f'"key": "{key}"' in logged, logged
    assert '"key": "allocations garbage"' in logged  # unreadable: said, and left out
    with sqlite3.connect(db) as rows:
        left = {key for (key,) in rows.execute("select id from allocations")}
    assert left == {kept.id, "garbage"}  # left out rows are deleted; unreadable ones ignored
    print(f"tried: {sorted(bad)} and a row that is not JSON; survived: only {kept.id[:8]}")
