"""The daemon's front door and its workers' lives, against what a stranger or a hostile tenant
can do with legitimate calls (issue 11): quotas that mean what they say, a front that idle
streams and connections cannot starve, workers that always end.

Daemons run for real on loopback (port 0); some run as ``gpupool daemon`` processes, so that a
test can kill them, or give them a descriptor limit of their own.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

import gpupool
from gpupool import grants
from gpupool import runtime as rt
from gpupool.client.context import DaemonLinks
from gpupool.client.session import Session
from gpupool.errors import CompileError, CUDARuntimeError
from gpupool.proto import gpupool_pb2 as pb
from gpupool.proto import gpupool_pb2_grpc as pb_grpc
from gpupool.proto.limits import GRPC_OPTIONS
from gpupool.server import confinement, service
from gpupool.server.daemon import Daemon, PoolMembership, start_daemon
from gpupool.server.lifecycle import Limits
from gpupool.server.pool import Worker
from gpupool.server.worker import EXIT_ORPHANED, WorkerSpec
from gpupool.transport.frames import MESSAGE, FrameSocket
from tests.conftest import GPUPOOL, compilers_of, run_client
from tests.daemons import DaemonProcess, call, gone_within, open_raw_tcp, tcp_address

MiB = 1 << 20
SECRET = b"a cluster secret for the front tests"
NODE = "front-test"
# A kernel that never ends, and first makes its worker deaf to SIGTERM (where it may).
ENDLESS = """
extern "C" void (*signal(int, void (*)(int)))(int);
extern "C" __global__ void spin(int *flag) {
    signal(15, (void (*)(int))1);
    while (*(volatile int *)flag == 0) { }
}
"""


def grant(memory: int, allocation: str = "alloc-1", device: int = 0) -> str:
    """A genuine grant of this test's pool (signed with its secret)."""
    expires = time.time() + 600
    return grants.sign(grants.Grant(allocation, NODE, device, memory, 0.25, expires), SECRET)


def links(daemon: Daemon) -> tuple[DaemonLinks, grpc.Channel]:
    channel = grpc.insecure_channel(daemon.address, GRPC_OPTIONS)
    info = pb_grpc.DaemonStub(channel).GetInfo(pb.InfoRequest(), timeout=10)
    return DaemonLinks(daemon.address, channel, info), channel


@contextlib.contextmanager
def session(daemon: Daemon, transport: str, token: str = "") -> Iterator[Session]:
    found, channel = links(daemon)
    opened = Session(found.open(transport, 10), 0, token=token)
    try:
        yield opened
    finally:
        opened.close()
        channel.close()


def malloc(opened: Session, size: int) -> int:
    return opened.call(pb.Request(malloc=pb.Malloc(size=size))).ptr


@pytest.fixture(scope="module")
def pooled() -> Iterator[Daemon]:
    """A daemon of a pool whose scheduler is never reached: grants are checked all the same."""
    membership = PoolMembership("127.0.0.1:9", NODE, SECRET)
    daemon = start_daemon(emu_devices=1, emu_memory=1 << 30, membership=membership)
    yield daemon
    daemon.stop()


@pytest.fixture(scope="module")
def bare() -> Iterator[Daemon]:
    daemon = start_daemon(emu_devices=1, emu_memory=1 << 30)
    yield daemon
    daemon.stop()


# 1. A zero quota is a quota of nothing.


@pytest.mark.parametrize("transport", ["grpc", "tcp"])
def test_a_grant_of_no_memory_gets_no_memory(pooled: Daemon, transport: str) -> None:
    """A share that rounded to nothing used to open with the whole device."""
    with session(pooled, transport, grant(0)) as opened:
        assert opened.properties.total_memory == 0
        info = opened.call(pb.Request(mem_get_info=pb.MemGetInfo())).mem_info
        assert (info.free, info.total) == (0, 0)
        with pytest.raises(CUDARuntimeError) as refused:
            malloc(opened, 1)
        assert refused.value.name == "cudaErrorMemoryAllocation"
        assert malloc(opened, 0) == 0  # as cudaMalloc(0): no memory, no error


def test_only_a_bare_daemon_without_a_limit_is_unlimited(bare: Daemon) -> None:
    with session(bare, "tcp") as opened:  # no limit asked: the device's memory
        assert opened.properties.total_memory == 1 << 30
        free(opened, malloc(opened, 512 * MiB))
    found, channel = links(bare)
    try:  # a limit the client sets itself, 0 included, is a limit
        link = found.open("tcp", 10)
        request = pb.Request(wait=True, open=pb.OpenSession(limits=pb.SessionLimits(memory=0)))
        link.send(request)
        assert link.receive().opened.properties.total_memory == 0
        link.send(pb.Request(wait=True, malloc=pb.Malloc(size=1)))
        assert link.receive().error.name == "cudaErrorMemoryAllocation"
        link.close(5)
    finally:
        channel.close()


def free(opened: Session, ptr: int) -> None:
    opened.call(pb.Request(free=pb.Free(ptr=ptr)))


# 3. The quota holds across an allocation's sessions on a device.


@pytest.mark.parametrize("transport", ["grpc", "tcp", "shm"])
def test_four_sessions_of_one_grant_share_its_quota(pooled: Daemon, transport: str) -> None:
    """Four sessions on one 256 MiB grant allocated 1,020 MiB between them."""
    token = grant(256 * MiB, allocation=f"four-{transport}")
    with contextlib.ExitStack() as stack:
        sessions = [stack.enter_context(session(pooled, transport, token)) for _ in range(4)]
        got, refused = 0, []
        for opened in sessions:
            try:
                malloc(opened, 200 * MiB)
                got += 200 * MiB
            except CUDARuntimeError as exc:
                refused.append(exc)
        assert got == 200 * MiB, "only one 200 MiB fits a 256 MiB quota"
        assert all(exc.name == "cudaErrorMemoryAllocation" for exc in refused)
        assert "allocation's quota on this device is 256MiB" in str(refused[0])
        more = malloc(sessions[1], 56 * MiB)  # what is left of it, from another session
        info = sessions[2].call(pb.Request(mem_get_info=pb.MemGetInfo())).mem_info
        assert (info.free, info.total) == (0, 256 * MiB)
        free(sessions[1], more)
    # another allocation's grant is not counted with it
    with session(pooled, transport, grant(256 * MiB, allocation="other")) as other:
        malloc(other, 200 * MiB)


@pytest.mark.gpu
def test_a_grants_quota_holds_across_its_sessions_on_a_gpu() -> None:
    """The CuPy backend counts each session's context and allocations in the same ledger."""
    membership = PoolMembership("127.0.0.1:9", NODE, SECRET)
    try:
        daemon = start_daemon(backend="cupy", membership=membership)
    except RuntimeError as exc:
        pytest.skip(f"no GPU here: {exc}")
    share = 8 << 30
    try:
        with contextlib.ExitStack() as stack:
            token = grant(share, allocation="gpu-four")
            sessions = [stack.enter_context(session(daemon, "tcp", token)) for _ in range(4)]
            got = 0
            for opened in sessions:
                with contextlib.suppress(CUDARuntimeError):
                    malloc(opened, 3 << 30)
                    got += 3 << 30
            assert 0 < got <= share - 4 * (256 * MiB)  # four contexts are in the share too
    finally:
        daemon.stop()


def test_an_ended_sessions_share_of_the_quota_comes_back(pooled: Daemon) -> None:
    token = grant(64 * MiB, allocation="comes-back")
    with session(pooled, "tcp", token) as first:
        malloc(first, 64 * MiB)
        with session(pooled, "tcp", token) as second, pytest.raises(CUDARuntimeError):
            malloc(second, 1 * MiB)
    deadline = time.monotonic() + 10
    with session(pooled, "tcp", token) as third:
        while True:  # the first worker's slot is cleared once it has exited
            try:
                malloc(third, 64 * MiB)
                break
            except CUDARuntimeError:
                assert time.monotonic() < deadline
                time.sleep(0.1)


# 4. Idle gRPC streams cannot starve the front.


class IdleStreams:
    """``count`` Session streams that never send a request, on a few channels of a stranger."""

    def __init__(self, address: str, count: int) -> None:
        self._stop = threading.Event()
        self.channels = [grpc.insecure_channel(address) for _ in range(-(-count // 100))]
        self.calls = []
        for index in range(count):
            stream = self.channels[index % len(self.channels)].stream_stream(
                f"/{service.SERVICE}/Session"
            )
            self.calls.append(stream(self._nothing()))

    def _nothing(self) -> Iterator[bytes]:
        self._stop.wait(120)
        yield from ()

    def ended(self) -> int:
        return sum(1 for stream in self.calls if stream.done())

    def close(self) -> None:
        self._stop.set()
        for stream in self.calls:
            stream.cancel()
        for channel in self.channels:
            channel.close()


def test_idle_grpc_streams_cannot_lock_the_front_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """300 streams that never send `open` filled the front's thread pool: GetInfo and new
    sessions on every transport waited until they closed. Now each waits at most the
    opening deadline, and they never take the threads the others need."""
    monkeypatch.setattr(service, "OPENING_DEADLINE_S", 4.0)
    daemon = start_daemon(emu_devices=1, emu_memory=256 * MiB)
    idle = IdleStreams(daemon.address, 300)
    try:
        time.sleep(1.0)  # all 300 are on the daemon now
        start = time.monotonic()
        channel = grpc.insecure_channel(daemon.address, GRPC_OPTIONS)
        pb_grpc.DaemonStub(channel).GetInfo(pb.InfoRequest(), timeout=3)
        channel.close()
        for transport in ("grpc", "tcp", "shm"):
            with session(daemon, transport) as opened:
                free(opened, malloc(opened, MiB))
        print(f"GetInfo and 3 sessions in {time.monotonic() - start:.2f} s beside 300 idle streams")
        deadline = time.monotonic() + 10
        while idle.ended() < 300 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert idle.ended() == 300, "idle streams are ended at the opening deadline"
    finally:
        idle.close()
        daemon.stop()


def test_streams_past_the_opening_cap_are_refused_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(service, "MAX_OPENING", 4)
    daemon = start_daemon(emu_devices=1, emu_memory=256 * MiB)
    idle = IdleStreams(daemon.address, 4)
    try:
        time.sleep(0.5)
        channel = grpc.insecure_channel(daemon.address, GRPC_OPTIONS)
        stream = channel.stream_stream(f"/{service.SERVICE}/Session")
        opening = pb.Request(wait=True, open=pb.OpenSession()).SerializeToString()
        replies = list(stream(iter([opening]), timeout=5))
        assert pb.Reply.FromString(replies[0]).error.name == "cudaErrorDevicesUnavailable"
        channel.close()
        with session(daemon, "tcp") as opened:  # frame transports are not held up
            malloc(opened, MiB)
    finally:
        idle.close()
        daemon.stop()


# 5. Past descriptor 1024.


def test_a_thousand_idle_connections_leave_sessions_opening(bare: Daemon) -> None:
    """With over 1024 descriptors in the front, workers got theirs above 1024 and their
    select() failed: 'worker exited with status 1' for everyone else's sessions."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if min(soft, hard) < 2500:
        pytest.skip(f"the descriptor limit ({soft}/{hard}) is too low to hold 1,000 connections")
    address = tcp_address(bare)
    stranger = [socket.create_connection(address) for _ in range(1000)]
    try:
        time.sleep(0.5)
        for transport in ("tcp", "grpc"):  # the second takes a worker started meanwhile
            with session(bare, transport) as opened:
                ptr = malloc(opened, MiB)
                data = np.arange(MiB // 8, dtype=np.int64)
                opened.write(_htod(ptr, MiB), memoryview(data).cast("B"), wait=True)
                back = np.empty_like(data)
                opened.read(_dtoh(ptr, MiB), memoryview(back).cast("B"))
                assert np.array_equal(back, data)
    finally:
        for each in stranger:
            each.close()


def _htod(ptr: int, size: int) -> pb.Request:
    return pb.Request(memcpy_htod=pb.MemcpyHtoD(dst=ptr, size=size))


def _dtoh(ptr: int, size: int) -> pb.Request:
    return pb.Request(memcpy_dtoh=pb.MemcpyDtoH(src=ptr, size=size))


# 6. The listener outlives a burst that runs it out of descriptors.


def test_the_frame_listener_keeps_accepting_after_running_out_of_descriptors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A burst of connections ran accept() into EMFILE and ended the accept loop for good:
    every tcp:// and shm:// client after it hung for ever."""
    daemon = DaemonProcess(nofile=160)
    burst: list[socket.socket] = []
    try:
        address = tcp_address(daemon.endpoints)
        for _ in range(300):
            sock = socket.socket()
            sock.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                sock.connect(address)
            burst.append(sock)
        time.sleep(2.0)  # the front takes what it can and runs out of descriptors
        for sock in burst:
            sock.close()
        burst.clear()
        for transport in ("tcp", "shm"):
            monkeypatch.setenv("GPUPOOL_TRANSPORT", transport)
            result = run_client(
                """
                import numpy as np
                from gpupool import runtime as rt
                ptr = rt.malloc(1 << 20)
                host = np.full(1 << 18, 7, np.int32)
                rt.memcpy(ptr, host.ctypes.data, 1 << 20, 1)
                back = np.zeros(1 << 18, np.int32)
                rt.memcpy(back.ctypes.data, ptr, 1 << 20, 2)
                print("ok", int(back.sum()))
                """,
                daemon.address,
                timeout=30,
            )
            assert result.stdout.split() == ["ok", str(7 << 18)], result.stderr
    finally:
        for sock in burst:
            sock.close()
        log = daemon.stop()
    assert "accept failed: backing off" in log
    assert "Traceback" not in log


# 7. Sessions that always end.


def test_a_worker_that_ignores_sigterm_is_killed_after_the_grace_period() -> None:
    ignoring = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal, time; signal.signal(15, signal.SIG_IGN);"
            " print(flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    assert ignoring.stdout is not None
    ignoring.stdout.readline()  # SIGTERM is ignored from here on
    ours, theirs = socket.socketpair()
    handoffs, their_handoffs = socket.socketpair(type=socket.SOCK_SEQPACKET)
    theirs.close()
    their_handoffs.close()
    worker = Worker(ignoring, ours, handoffs, slot=0, kill_grace=0.5)
    start = time.monotonic()
    worker.kill()
    assert worker.wait(5) == -signal.SIGKILL
    assert 0.4 < time.monotonic() - start < 3
    worker.close()
    ignoring.stdout.close()


def _endless_kernel_client(daemon_address: str, transport: str) -> subprocess.Popen[str]:
    """A client that launches a kernel that never ends and waits for it."""
    code = f"""
import numpy as np
import gpupool
from gpupool import runtime as rt
spin = gpupool.Module.from_source({ENDLESS!r}).get_function("spin")
flag = rt.malloc(4)
rt.memset(flag, 0, 4)
print("launching", flush=True)
spin((1, 1, 1), (1, 1, 1), (np.uint64(flag),))
rt.deviceSynchronize()
"""
    env = dict(os.environ, GPUPOOL_DAEMONS=daemon_address, GPUPOOL_TRANSPORT=transport)
    return subprocess.Popen(
        [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True
    )


@pytest.mark.parametrize("transport", ["tcp", "grpc"])
def test_an_endless_kernel_ends_when_its_client_is_gone(transport: str) -> None:
    """It used to keep burning a core after its client had gone."""
    daemon = start_daemon(emu_devices=1, emu_memory=256 * MiB, limits=Limits(stop_grace_s=1.0))
    try:
        client = _endless_kernel_client(daemon.address, transport)
        assert client.stdout is not None and client.stdout.readline() == "launching\n"
        pool = daemon.pools[0]
        deadline = time.monotonic() + 20
        while not pool.busy_pids() and time.monotonic() < deadline:
            time.sleep(0.05)
        busy = pool.busy_pids()
        time.sleep(1.0)  # spinning now
        client.kill()
        client.communicate()
        assert gone_within(busy, 10), "the busy worker outlived its client"
        with session(daemon, transport) as opened:
            malloc(opened, MiB)
    finally:
        daemon.stop()


def _group(leader: int) -> list[int]:
    """The processes of ``leader``'s process group (a worker and what it started)."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[2]) == leader:
                    members.append(int(entry.name))
    return members


def test_a_long_compile_ends_with_its_client_compiler_and_all() -> None:
    """A 600 s compile kept burning CPU after its client had gone."""
    daemon = start_daemon(emu_devices=1, emu_memory=256 * MiB, limits=Limits(stop_grace_s=1))
    slow = SLOW_COMPILE.replace("SALT", f"gone {time.time_ns()}")
    code = f"import gpupool; gpupool.Module.from_source({slow!r}).get_function('k')"
    env = dict(os.environ, GPUPOOL_DAEMONS=daemon.address, GPUPOOL_TRANSPORT="tcp")
    compiling = subprocess.Popen([sys.executable, "-c", code], env=env)
    try:
        deadline = time.monotonic() + 30
        group: list[int] = []
        while time.monotonic() < deadline:  # the worker and its compiler
            busy = daemon.pools[0].busy_pids()
            group = _group(busy[0]) if busy else []
            if busy and daemon.confined:  # the compile service runs the compiler
                group += compilers_of(confinement.compiler_uid())
            if len(group) > 1:
                break
            time.sleep(0.1)
        assert len(group) > 1, "the compiler was running"
        compiling.kill()
        compiling.wait()
        assert gone_within(group, 10), "the worker and its compiler outlived the client"
    finally:
        compiling.kill()
        compiling.wait()
        daemon.stop()


def test_kernels_and_compiles_past_their_limits_get_typed_errors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    limits = Limits(kernel_s=1.5, compile_s=120, stop_grace_s=1.0)
    daemon = start_daemon(emu_devices=1, emu_memory=256 * MiB, limits=limits)
    monkeypatch.setenv("GPUPOOL_TRANSPORT", "tcp")
    quick = start_daemon(emu_devices=1, emu_memory=256 * MiB, limits=Limits(compile_s=1.0))
    try:
        gpupool.connect(daemon.address)
        spin = gpupool.Module.from_source(ENDLESS).get_function("spin")
        flag = rt.malloc(4)
        rt.memset(flag, 0, 4)
        start = time.monotonic()
        with pytest.raises(CUDARuntimeError) as timed_out:
            spin((1, 1, 1), (1, 1, 1), (np.uint64(flag),))
            rt.deviceSynchronize()
        assert timed_out.value.name == "cudaErrorLaunchTimeout"
        assert "limit of 1.5 s" in str(timed_out.value)
        assert 1.4 < time.monotonic() - start < 8
        gpupool.disconnect()
        gpupool.connect(quick.address)
        slow = SLOW_COMPILE.replace("SALT", str(time.time_ns()))
        start = time.monotonic()
        with pytest.raises(CompileError, match="limit of 1 s"):
            gpupool.Module.from_source(slow).get_function("k")
        assert time.monotonic() - start < 8
        gpupool.disconnect()
        gpupool.connect(quick.address)  # the daemon goes on
        assert rt.memGetInfo()[1] == 256 * MiB
    finally:
        gpupool.disconnect()
        daemon.stop()
        quick.stop()


# A compile that takes the host compiler many seconds: constant evaluation of 9 million loop
# turns (each loop under GCC's 262,144-turn limit for one constexpr loop).
SLOW_COMPILE = """
// SALT
constexpr unsigned long long churn(unsigned long long n) {
    unsigned long long x = 0;
    for (unsigned long long i = 0; i < n; ++i)
        for (unsigned long long j = 0; j < n; ++j) x = x * 6364136223846793005ULL + i + j;
    return x;
}
constexpr unsigned long long value = churn(3000ULL);
extern "C" __global__ void k(unsigned long long *out) { *out = value; }
"""


def test_gpupool_daemon_stops_with_a_kernel_that_ignores_everything() -> None:
    """A kernel deep in native code kept `gpupool daemon` from stopping (SIGTERM twice, then
    waiting for ever)."""
    daemon = DaemonProcess(env={"GPUPOOL_STOP_GRACE": "1"})
    client = _endless_kernel_client(daemon.address, "tcp")
    try:
        assert client.stdout is not None and client.stdout.readline() == "launching\n"
        time.sleep(1.0)
        workers = daemon.workers()
        start = time.monotonic()
        daemon.stop(timeout=20)
        print(f"daemon stopped in {time.monotonic() - start:.1f} s")
        assert gone_within(workers, 5)
    finally:
        client.kill()
        client.communicate()


# 9. Workers die with their front.


def test_workers_die_with_their_front() -> None:
    """Killing the daemon orphaned tcp/shm workers that went on serving their sessions."""
    daemon = DaemonProcess()
    frames = open_raw_tcp(daemon.endpoints)
    try:
        assert call(frames, pb.Request(malloc=pb.Malloc(size=MiB))).ptr
        workers = daemon.workers()
        assert workers
        daemon.process.kill()
        daemon.process.wait()
        assert gone_within(workers, 5), "a worker outlived its front"
    finally:
        frames.close()
        daemon.stop()


def test_a_worker_whose_front_is_already_gone_does_not_start() -> None:
    """The parent-death signal is asked for after the worker starts: if the front ended
    before that, the worker finds another parent and ends."""
    from gpupool.server.backends import BackendConfig

    spec = WorkerSpec(BackendConfig("emu"), 0, 0, None, 0, "info", front_pid=1)
    result = subprocess.run(
        [sys.executable, "-m", "gpupool.server.worker", spec.to_json(), "0", "0"],
        timeout=30,
        capture_output=True,
    )
    assert result.returncode == EXIT_ORPHANED


# 12. Log noise a stranger can trigger.


def test_a_call_no_session_serves_is_refused_by_name(caplog: pytest.LogCaptureFixture) -> None:
    """`attach` inside a session was cudaErrorUnknown: AttributeError, logged as a daemon bug."""
    from gpupool.server.backends.emu import EmuBackend, MemoryLedger
    from gpupool.server.executor import SessionExecutor
    from tests.conftest import run_request

    ledger = MemoryLedger.create(1 << 20, 1)
    try:
        executor = SessionExecutor(EmuBackend(0, ledger, 0), lambda exc: exc)
        with caplog.at_level(logging.INFO):
            (reply,) = run_request(executor, attach=pb.AttachStripe(key=b"k", stripe=1))
        assert reply.error.name == "cudaErrorNotSupported"
        assert "'attach' is not a call of an open session" in reply.error.message
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
        (ok,) = run_request(executor, malloc=pb.Malloc(size=256))
        assert ok.ptr
    finally:
        ledger.close()


def test_refusals_to_strangers_who_left_print_no_traceback() -> None:
    daemon = DaemonProcess()
    try:
        address = tcp_address(daemon.endpoints)
        for opening in (
            pb.Request(open=pb.OpenSession(stripes=1000)),  # refused by the listener
            pb.Request(open=pb.OpenSession(device=7)),  # refused by the front
            pb.Request(attach=pb.AttachStripe(key=b"guess", stripe=1)),
        ):
            for _ in range(20):
                sock = socket.create_connection(address)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
                FrameSocket(sock).send(MESSAGE, opening.SerializeToString())
                sock.close()  # reset: the refusal finds nobody
        frames = open_raw_tcp(daemon.endpoints)
        assert call(frames, pb.Request(malloc=pb.Malloc(size=MiB))).ptr
        frames.close()
    finally:
        log = daemon.stop()
    assert "Traceback" not in log and "BrokenPipe" not in log, log[-3000:]


def test_limits_come_from_options_then_the_environment_and_must_be_finite(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GPUPOOL_KERNEL_TIME_LIMIT", "30")
    limits = Limits.from_env(compile_s=9.0)
    assert (limits.kernel_s, limits.compile_s, limits.stop_grace_s) == (30.0, 9.0, 5.0)
    for bad in ("abc", "inf", "nan", "-1", "0"):
        monkeypatch.setenv("GPUPOOL_KERNEL_TIME_LIMIT", bad)
        with pytest.raises(ValueError, match="seconds"):
            Limits.from_env()
    result = subprocess.run(
        [*GPUPOOL, "daemon", "--kernel-time-limit", "inf"], capture_output=True, text=True
    )
    assert result.returncode == 2 and "not a positive number of seconds" in result.stderr
