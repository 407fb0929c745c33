"""The standing hostile suite, daemon part (issue 11): load over every transport, and faults
at awkward moments — clients, workers and the daemon killed or stopped mid-copy, mid-batch,
mid-open. Each test prints what it tried and what survived.

CI runs bounded versions (a few seconds each); ``--run-slow`` runs the full ones.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import grpc
import numpy as np
import pytest

from gpupool.client.context import DaemonLinks
from gpupool.client.session import Session
from gpupool.errors import GpupoolError
from gpupool.proto import gpupool_pb2 as pb
from gpupool.proto import gpupool_pb2_grpc as pb_grpc
from gpupool.proto.limits import GRPC_OPTIONS
from gpupool.server.daemon import Daemon, start_daemon
from gpupool.server.lifecycle import Limits
from gpupool.transport.links import OPENERS
from tests.daemons import DaemonProcess, gone_within

MiB = 1 << 20
TRANSPORTS = [name for name in ("grpc", "tcp", "shm", "ucx") if name in OPENERS]
SIZES = (256, 40 << 10, 300 << 10, 3 * MiB, 5 * MiB)  # inline, chunked, striped payloads


@dataclass
class Tally:
    """What one load session did."""

    ops: int = 0
    bytes_checked: int = 0
    mismatches: int = 0
    errors: list[str] = field(default_factory=list)


@contextlib.contextmanager
def opened(address: str, transport: str) -> Iterator[Session]:
    channel = grpc.insecure_channel(address, GRPC_OPTIONS)
    try:
        info = pb_grpc.DaemonStub(channel).GetInfo(pb.InfoRequest(), timeout=10)
        session = Session(DaemonLinks(address, channel, info).open(transport, 10), 0)
        try:
            yield session
        finally:
            session.close()
    finally:
        channel.close()


class Mixed:
    """One session's mixed operations, each result checked against a host copy."""

    def __init__(self, session: Session, seed: int) -> None:
        self.session = session
        self.rng = np.random.default_rng(seed)
        self.buffers: dict[int, np.ndarray] = {}  # device pointer -> what it should hold
        self.tally = Tally()

    def step(self) -> None:
        rng, s = self.rng, self.session
        choice = rng.integers(6) if self.buffers else 0
        if choice == 0 or len(self.buffers) < 2:
            size = int(rng.choice(SIZES))
            ptr = s.call(pb.Request(malloc=pb.Malloc(size=size))).ptr
            data = rng.integers(0, 256, size, dtype=np.uint8)
            s.write(pb.Request(memcpy_htod=pb.MemcpyHtoD(dst=ptr, size=size)), data.data, True)
            self.buffers[ptr] = data
        elif choice == 1:
            ptr = self._some()
            self.session.call(pb.Request(free=pb.Free(ptr=ptr)))
            del self.buffers[ptr]
        elif choice == 2:
            ptr = self._some()
            value = int(rng.integers(256))
            size = self.buffers[ptr].size
            s.submit(pb.Request(memset=pb.Memset(ptr=ptr, value=value, size=size)))
            self.buffers[ptr] = np.full(size, value, np.uint8)
        elif choice == 3:
            src, dst = self._some(), self._some()
            size = min(self.buffers[src].size, self.buffers[dst].size)
            s.submit(pb.Request(memcpy_dtod=pb.MemcpyDtoD(dst=dst, src=src, size=size)))
            self.buffers[dst] = self.buffers[dst].copy()
            self.buffers[dst][:size] = self.buffers[src][:size]
        elif choice == 4:
            info = s.call(pb.Request(mem_get_info=pb.MemGetInfo())).mem_info
            assert info.free <= info.total
        else:
            self.check(self._some())
        self.tally.ops += 1

    def check(self, ptr: int) -> None:
        expected = self.buffers[ptr]
        back = np.empty_like(expected)
        request = pb.Request(memcpy_dtoh=pb.MemcpyDtoH(src=ptr, size=expected.size))
        self.session.read(request, back.data)
        self.tally.bytes_checked += expected.size
        if not np.array_equal(back, expected):
            self.tally.mismatches += 1

    def finish(self) -> None:
        for ptr in list(self.buffers):
            self.check(ptr)
            self.session.call(pb.Request(free=pb.Free(ptr=ptr)))
        self.buffers.clear()

    def _some(self) -> int:
        return list(self.buffers)[int(self.rng.integers(len(self.buffers)))]


def run_load(address: str, transport: str, seconds: float, seed: int) -> Tally:
    mixed: Mixed | None = None
    try:
        with opened(address, transport) as session:
            mixed = Mixed(session, seed)
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                mixed.step()
            mixed.finish()
            return mixed.tally
    except (GpupoolError, AssertionError) as exc:
        tally = mixed.tally if mixed else Tally()
        tally.errors.append(f"{type(exc).__name__}: {exc}")
        return tally


def wait_for_baseline(daemon: Daemon, within: float = 15) -> tuple[int, int]:
    """(busy workers, bytes accounted) once every session's worker has gone, or at timeout."""
    deadline = time.monotonic() + within
    while True:
        busy = sum(len(pool.busy_pids()) for pool in daemon.pools)
        held = sum(
            pool.quotas.held() + (pool.ledger.used() if pool.ledger else 0) for pool in daemon.pools
        )
        if (busy, held) == (0, 0) or time.monotonic() > deadline:
            return busy, held
        time.sleep(0.05)


def load(sessions: int, seconds: float) -> None:
    daemon = start_daemon(emu_devices=1, emu_memory=2 << 30, warm=2)
    try:
        results: dict[tuple[str, int], Tally] = {}

        def one(transport: str, index: int) -> None:
            results[transport, index] = run_load(daemon.address, transport, seconds, index)

        threads = [
            threading.Thread(target=one, args=(transport, index))
            for transport in TRANSPORTS
            for index in range(sessions)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(seconds + 60)
        busy, held = wait_for_baseline(daemon)
        ops = sum(t.ops for t in results.values())
        checked = sum(t.bytes_checked for t in results.values())
        mismatches = sum(t.mismatches for t in results.values())
        errors = [e for t in results.values() for e in t.errors]
        print(
            f"load: tried {len(threads)} sessions ({sessions} x {', '.join(TRANSPORTS)}) x"
            f" {seconds:g} s of mixed calls; survived: {ops} calls, {checked / MiB:.0f} MiB"
            f" checked, {mismatches} mismatches, {len(errors)} errors; afterwards {busy} busy"
            f" workers, {held} bytes accounted"
        )
        assert len(results) == len(threads)
        assert not errors, errors[:3]
        assert mismatches == 0
        assert (busy, held) == (0, 0)
    finally:
        daemon.stop()


def test_load_bounded() -> None:
    load(sessions=3, seconds=3)


@pytest.mark.slow
def test_load_full() -> None:
    load(sessions=20, seconds=60)


# Faults


WRITER = """
import sys
import numpy as np
from gpupool import runtime as rt
size = 32 << 20
host = np.ones(size, np.uint8)
ptr = rt.malloc(size)
print("copying", flush=True)
while True:
    rt.memcpy(ptr, host.ctypes.data, size, rt.memcpyHostToDevice)
"""

BATCHER = """
import numpy as np
from gpupool import runtime as rt
size = 1 << 20
ptr = rt.malloc(size)
print("batching", flush=True)
while True:
    for value in range(200):
        rt.memsetAsync(ptr, value, size, 0)
    rt.deviceSynchronize()
"""


def client(daemon_address: str, transport: str, code: str) -> subprocess.Popen[str]:
    env = dict(os.environ, GPUPOOL_DAEMONS=daemon_address, GPUPOOL_TRANSPORT=transport)
    process = subprocess.Popen(
        [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() in ("copying", "batching")
    return process


def end(process: subprocess.Popen[str]) -> None:
    process.kill()
    process.communicate()


@pytest.fixture
def daemon() -> Iterator[Daemon]:
    started = start_daemon(emu_devices=1, emu_memory=1 << 30, limits=Limits(stop_grace_s=1))
    yield started
    started.stop()


def survives(daemon: Daemon, transport: str) -> str:
    """A fresh session's round trip, and the memory back to what it was."""
    tally = run_load(daemon.address, transport, 0.3, 7)
    assert not tally.errors and tally.mismatches == 0, tally
    return f"a new {transport} session's {tally.ops} calls checked"


CLIENT_FAULTS = [(WRITER, "mid-copy", False), (BATCHER, "mid-batch", True)]
CLIENT_FAULTS += [(WRITER, "mid-copy", True), (BATCHER, "mid-batch", False)]


def kill_clients(
    daemon: Daemon, transport: str, cases: list[tuple[str, str, bool]], rounds: int
) -> None:
    survived = []
    for _ in range(rounds):
        for code, moment, stop_first in cases:
            victim = client(daemon.address, transport, code)
            time.sleep(0.3)
            if stop_first:  # a stopped client holds its connection open, reading nothing
                victim.send_signal(signal.SIGSTOP)
                time.sleep(0.3)
            end(victim)  # SIGKILL reaches a stopped process too
            busy, held = wait_for_baseline(daemon)
            how = "SIGSTOP+SIGKILL" if stop_first else "SIGKILL"
            assert (busy, held) == (0, 0), f"{how} {moment}: {busy} workers, {held} bytes left"
            survived.append(f"{how} {moment}: workers gone, memory back")
    survived.append(survives(daemon, transport))
    print(f"{transport}: tried killing and stopping clients; survived: {survived}")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_clients_killed_or_stopped_mid_copy_and_mid_batch(daemon: Daemon, transport: str) -> None:
    """Bounded: one fault a transport, each transport another of the four."""
    case = CLIENT_FAULTS[TRANSPORTS.index(transport) % len(CLIENT_FAULTS)]
    kill_clients(daemon, transport, [case], rounds=1)


@pytest.mark.slow
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_clients_killed_or_stopped_full(daemon: Daemon, transport: str) -> None:
    kill_clients(daemon, transport, CLIENT_FAULTS, rounds=5)


def test_workers_killed_or_stopped_mid_copy_and_mid_batch(daemon: Daemon) -> None:
    """A worker's death ends its session with a typed error; a stopped one resumes; the
    session beside them never notices."""
    bystander_done = threading.Event()
    bystander: list[Tally] = []

    def bystand() -> None:
        bystander.append(run_load(daemon.address, "tcp", 4, 3))
        bystander_done.set()

    thread = threading.Thread(target=bystand)
    thread.start()
    time.sleep(0.5)  # its session is open
    told = []
    try:
        for code in (WRITER, BATCHER):
            others = set(daemon.pools[0].busy_pids())  # the bystander's
            victim = client(daemon.address, "grpc", code)
            time.sleep(0.5)
            ours = sorted(set(daemon.pools[0].busy_pids()) - others)
            assert len(ours) == 1, "the victim's worker"
            os.kill(ours[0], signal.SIGSTOP)
            time.sleep(0.5)
            os.kill(ours[0], signal.SIGCONT)  # resumes: the client goes on
            time.sleep(0.3)
            assert victim.poll() is None, "a stopped and continued worker's client goes on"
            os.kill(ours[0], signal.SIGKILL)
            _out, _ = victim.communicate(timeout=20)
            told.append(victim.returncode)
    finally:
        thread.join(30)
    assert bystander_done.is_set() and not bystander[0].errors and not bystander[0].mismatches
    assert all(code != 0 for code in told), "the victims were told their session ended"
    assert wait_for_baseline(daemon) == (0, 0)
    print(
        f"tried: SIGSTOP/SIGCONT then SIGKILL of workers mid-copy and mid-batch; survived: the"
        f" bystander's {bystander[0].ops} calls, the victims got errors (exit {told}),"
        " memory back"
    )


def test_the_daemon_killed_mid_open_leaves_no_worker_and_a_stopped_one_resumes() -> None:
    survived = []
    daemon = DaemonProcess()
    writer = client(daemon.address, "tcp", WRITER)
    relayed = client(daemon.address, "grpc", WRITER)
    try:
        daemon.process.send_signal(signal.SIGSTOP)  # mid-copy: tcp goes on, gRPC waits
        time.sleep(0.5)
        daemon.process.send_signal(signal.SIGCONT)
        time.sleep(0.3)
        assert writer.poll() is None and relayed.poll() is None
        survived.append("SIGSTOP/SIGCONT mid-copy: both sessions go on")
        openers = [
            subprocess.Popen(
                [sys.executable, "-c", "from gpupool import runtime as rt; rt.malloc(1)"],
                env=dict(os.environ, GPUPOOL_DAEMONS=daemon.address, GPUPOOL_TRANSPORT=t),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for t in ("tcp", "grpc", "shm")
        ]
        time.sleep(0.4)  # some are opening now
        workers = daemon.workers()
        daemon.process.kill()
        daemon.process.wait()
        assert gone_within(workers, 5), "no worker outlives its front"
        survived.append(f"SIGKILL mid-open: all {len(workers)} workers gone")
        for each in (writer, relayed):
            each.wait(10)  # told: their connection ended
        survived.append("the clients mid-copy were told")
        for opener in openers:  # those that were opening may wait on a daemon that is gone
            opener.kill()
            opener.wait()
    finally:
        for each in (writer, relayed):
            end(each)
        daemon.stop()
    again = DaemonProcess()
    try:
        result = subprocess.run(
            [sys.executable, "-c", "from gpupool import runtime as rt; print(rt.memGetInfo())"],
            env=dict(os.environ, GPUPOOL_DAEMONS=again.address),
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.stdout.strip() == f"({256 * MiB}, {256 * MiB})", result.stderr
        survived.append("a restarted daemon hands out all its memory, and only its own")
    finally:
        again.stop()
    print(f"tried: daemon SIGSTOP mid-copy, SIGKILL mid-open; survived: {survived}")
