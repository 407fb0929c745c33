"""A tenant's emulated kernel is native code: what it tries against the daemon must fail.

Each attack is a real kernel run through a real daemon (the daemon's environment holding a
cluster secret): read the secret, run a program, read /etc/shadow, signal the daemon and
another tenant's worker, read that worker's memory through /proc/PID/mem and
process_vm_readv, trace it, plant a module in the kernel cache. Each must fail while the
daemon and the other session go on with their memory intact. Confinement needs root (skipped
elsewhere); where it is not possible a pool refuses the emulator unless told it is trusted.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import gpupool
from gpupool import runtime as rt
from gpupool.errors import CompileError
from gpupool.server import confinement, seccomp
from gpupool.server.backends.emu_compile_service import CompileClient, shared_cache
from gpupool.server.daemon import Daemon, start_daemon
from gpupool.server.lifecycle import Limits
from tests.conftest import compilers_of

SECRET = "h2-secret-the-kernel-must-not-see"

needs_confinement = pytest.mark.skipif(
    confinement.unavailable() is not None,
    reason=f"workers cannot be confined here: {confinement.unavailable()}",
)

# The victim writes its pid and a pattern into its own memory and keeps it there.
VICTIM = r"""
#include <unistd.h>
extern "C" __global__ void mark(long long* out, unsigned char* data, int n) {
    out[0] = getpid();
    for (int i = 0; i < n; ++i) data[i] = (unsigned char)(i * 7 + 1);
}
"""

# Every attack writes its result (0: it failed, as it must) into out[i].
ATTACKER = r"""
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <signal.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>
extern "C" __global__ void attack(long long* out, long long victim, long long address,
                                  const char* cache) {
    const char* secret = getenv("GPUPOOL_CLUSTER_SECRET");
    out[0] = secret != nullptr;
    out[1] = system("id > /tmp/gpupool-confinement-pwned") == 0;
    FILE* shadow = fopen("/etc/shadow", "r");
    out[2] = shadow != nullptr;
    out[3] = kill(getppid(), SIGKILL) == 0;
    out[4] = kill((pid_t)victim, SIGKILL) == 0;
    char path[64];
    snprintf(path, sizeof path, "/proc/%lld/mem", victim);
    int mem = open(path, O_RDONLY);
    unsigned char stolen[16] = {0};
    out[5] = mem >= 0 && pread(mem, stolen, sizeof stolen, (off_t)address) > 0;
    struct iovec local = {stolen, sizeof stolen}, remote = {(void*)address, sizeof stolen};
    out[6] = process_vm_readv((pid_t)victim, &local, 1, &remote, 1, 0) > 0;
    out[7] = ptrace(PTRACE_ATTACH, (pid_t)victim, nullptr, nullptr) == 0;
    out[8] = fork() >= 0;
    char planted[512];
    snprintf(planted, sizeof planted, "%s/planted.so", cache);
    out[9] = fopen(planted, "w") != nullptr;
    out[10] = kill(getpid(), 0) == 0;  /* signals to itself stay allowed */
    out[11] = socket(AF_UNIX, SOCK_STREAM, 0) >= 0;
}
"""
ATTACKS = (
    "getenv secret",
    "system()",
    "fopen /etc/shadow",
    "kill(getppid())",
    "kill(other worker)",
    "/proc/PID/mem",
    "process_vm_readv",
    "ptrace",
    "fork",
    "plant in cache",
    None,  # kill(self), which must work
    "socket()",
)


@pytest.fixture(scope="module")
def confined() -> Iterator[Daemon]:
    os.environ["GPUPOOL_CLUSTER_SECRET"] = SECRET
    try:
        daemon = start_daemon(backend="emu", emu_devices=2, emu_memory=256 << 20)
    finally:
        del os.environ["GPUPOOL_CLUSTER_SECRET"]
    yield daemon
    daemon.stop()


@needs_confinement
def test_each_attack_of_a_kernel_fails_and_the_others_go_on(confined: Daemon) -> None:
    assert confined.confined
    gpupool.connect(confined.address)
    try:
        rt.setDevice(1)  # the victim: another tenant's worker
        n = 4096
        victim_out, victim_data = rt.malloc(64), rt.malloc(n)
        mark = gpupool.Module.from_source(VICTIM).get_function("mark")
        mark((1,), (1,), (victim_out, victim_data, np.int32(n)))
        pid = np.zeros(8, np.int64)
        rt.memcpy(pid.ctypes.data, victim_out, 64, rt.memcpyDeviceToHost)

        rt.setDevice(0)
        out = rt.malloc(16 * 8)
        cache = rt.malloc(512)
        path = np.zeros(512, np.uint8)
        planted = shared_cache() / "emu-kernels" / "planted.so"
        planted.unlink(missing_ok=True)
        Path("/tmp/gpupool-confinement-pwned").unlink(missing_ok=True)
        name = str(planted.parent).encode()
        path[: len(name)] = np.frombuffer(name, np.uint8)
        rt.memcpy(cache, path.ctypes.data, 512, rt.memcpyHostToDevice)
        attack = gpupool.Module.from_source(ATTACKER).get_function("attack")
        attack((1,), (1,), (out, np.int64(pid[0]), np.int64(victim_data), cache))
        results = np.zeros(16, np.int64)
        rt.memcpy(results.ctypes.data, out, results.nbytes, rt.memcpyDeviceToHost)
        print(
            {
                what: "SUCCEEDED" if got else "failed (good)"
                for what, got in zip(ATTACKS, results, strict=False)
                if what
            }
        )
        succeeded = [what for what, got in zip(ATTACKS, results, strict=False) if got and what]
        assert succeeded == []
        assert results[10] == 1  # the filter is not simply refusing everything
        assert not Path("/tmp/gpupool-confinement-pwned").exists()
        assert not planted.exists()

        # The daemon, the victim's session and its memory are all there.
        rt.setDevice(1)
        data = np.zeros(n, np.uint8)
        rt.memcpy(data.ctypes.data, victim_data, n, rt.memcpyDeviceToHost)
        assert (data == (np.arange(n) * 7 + 1).astype(np.uint8)).all()
        assert rt.getDeviceCount() == 2
    finally:
        gpupool.disconnect()


@needs_confinement
def test_a_kernel_runs_as_a_user_of_its_own(confined: Daemon) -> None:
    source = r"""
    #include <unistd.h>
    #include <sys/prctl.h>
    extern "C" __global__ void who(long long* out) {
        out[0] = getuid(); out[1] = getgid(); out[2] = prctl(PR_GET_DUMPABLE, 0, 0, 0, 0);
        out[3] = getpid();
    }"""
    gpupool.connect(confined.address)
    try:
        out = rt.malloc(64)
        gpupool.Module.from_source(source).get_function("who")((1,), (1,), (out,))
        got = np.zeros(8, np.int64)
        rt.memcpy(got.ctypes.data, out, 64, rt.memcpyDeviceToHost)
    finally:
        gpupool.disconnect()
    uid, gid, dumpable, pid = got[:4]
    assert uid == gid == confinement.uid_base() + pid
    assert dumpable == 0


def test_workers_never_inherit_the_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPUPOOL_CLUSTER_SECRET", SECRET)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("GPUPOOL_EMU_STACK_KIB", "128")
    env = confinement.worker_environment({"CUDA_MPS_PIPE_DIRECTORY": "/x"})
    assert SECRET not in env.values()
    assert env["GPUPOOL_EMU_STACK_KIB"] == "128" and env["CUDA_MPS_PIPE_DIRECTORY"] == "/x"


def _gpupool(
    args: list[str], env: dict[str, str], timeout: float, nobody: bool = False
) -> subprocess.Popen[str]:
    """The ``gpupool`` command with ``env`` added to a worker's environment (as user nobody)."""
    as_nobody = {"user": 65534, "group": 65534, "extra_groups": []} if nobody else {}
    return subprocess.Popen(
        [sys.executable, "-m", "gpupool.cli", *args],
        env={**confinement.worker_environment(), **env},
        cwd="/",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **as_nobody,  # type: ignore[arg-type]
    )


def _finish(process: subprocess.Popen[str], timeout: float) -> tuple[int, str, str]:
    try:
        out, err = process.communicate(timeout=timeout)
    finally:
        process.kill()
        process.wait()
    return process.returncode, out, err


def _nobody_can_run_python() -> bool:
    if os.geteuid() != 0:
        return False
    check = [sys.executable, "-c", "import gpupool"]
    try:
        return subprocess.run(check, user=65534, cwd="/", timeout=60).returncode == 0
    except PermissionError:
        return False


# Unconfinable: not root (where this interpreter is nobody's to run), or told not to confine.
UNCONFINED = [
    pytest.param({confinement.ENV_CONFINE: "0"}, False, id="confinement-off"),
    pytest.param(
        {"HOME": "/tmp", "GPUPOOL_CACHE_DIR": "/tmp/gpupool-nobody-cache"},
        True,
        id="not-root",
        marks=pytest.mark.skipif(
            not _nobody_can_run_python(), reason="needs root and an interpreter others can run"
        ),
    ),
]


@pytest.mark.parametrize("env, nobody", UNCONFINED)
def test_an_unconfinable_emulator_serves_a_pool_only_when_trusted(
    env: dict[str, str], nobody: bool
) -> None:
    env = {**env, "GPUPOOL_CLUSTER_SECRET": SECRET}
    pooled = ["daemon", "--backend", "emu", "--listen", "127.0.0.1:0", "--scheduler", "127.0.0.1:9"]
    code, _, err = _finish(_gpupool(pooled, env, 60, nobody), 60)
    assert code == 1
    assert "cannot confine the emulator's kernels" in err and "--trusted-emulator" in err

    # Told it is a trusted development pool, it starts (and keeps trying the scheduler).
    process = _gpupool([*pooled, "--trusted-emulator"], env, 60, nobody)
    try:
        assert process.stdout is not None
        assert process.stdout.readline().startswith("gpupool daemon on")
    finally:
        process.terminate()
        _finish(process, 30)

    # A bare daemon is its user's own: it serves, unconfined.
    bare = _gpupool(["daemon", "--backend", "emu", "--listen", "127.0.0.1:0"], env, 60, nobody)
    try:
        assert bare.stdout is not None
        assert bare.stdout.readline().startswith("gpupool daemon on")
    finally:
        bare.terminate()
        _finish(bare, 30)


@pytest.mark.parametrize("env, nobody", UNCONFINED)
def test_the_embedded_pool_needs_no_set_up_when_unconfinable(
    env: dict[str, str], nobody: bool
) -> None:
    program = "import gpupool.cupy as cp; print(int(cp.arange(10).sum()))"
    run = ["run", "-n", "1", "--backend", "emu", "--", sys.executable, "-c", program]
    code, out, err = _finish(_gpupool(run, env, 120, nobody), 120)
    assert code == 0, err[-2000:]
    assert out.strip().endswith("45")


@needs_confinement
def test_the_compile_service_checks_what_workers_send(confined: Daemon) -> None:
    """A confined kernel can write to its worker's connection to the compile service itself:
    the service applies the same checks as a session, and writes its cache alone."""
    assert confined.compile_service is not None
    compile = CompileClient(confined.compile_service.connect())
    with pytest.raises(CompileError, match="refused"):
        compile('#include "shadow"\n', ["-I/etc"])
    with pytest.raises(CompileError, match="refused"):
        compile('%:include "/etc/passwd"\n', [])
    compiled = compile('extern "C" __global__ void k(int* p) { *p = 1; }\n', [])
    assert compiled.names == ("k",) and compiled.path.stat().st_mode & 0o777 == 0o644
    assert compiled.path.stat().st_uid == confinement.compiler_uid()
    folder = compiled.path.parent.parent.stat()
    assert folder.st_uid == confinement.compiler_uid() and not folder.st_mode & 0o022


INCLUDE_BYPASSES = (
    '%:include "/etc/passwd"\n',
    '#/**/include "/etc/passwd"\n',
    '#inc\\\nlude "/etc/passwd"\n',
    '#import "/etc/passwd"\n',
)


def test_include_bypasses_are_refused_on_every_backend(daemon: Daemon) -> None:
    """The GPU daemon's NVRTC gets the same filter (the emulator checks its preprocessor too)."""
    gpupool.connect(daemon.address)
    try:
        for source in INCLUDE_BYPASSES:
            with pytest.raises(CompileError, match="refused") as refused:
                gpupool.Module.from_source(source + 'extern "C" __global__ void k() {}\n')
            assert "root:" not in refused.value.log
        with pytest.raises(CompileError, match="refused"):
            gpupool.Module.from_source('extern "C" __global__ void k() {}\n', ["--time=/tmp/t"])
    finally:
        gpupool.disconnect()


SLOW_COMPILE = r"""
constexpr long spin() {
    long s = 0;
    for (long i = 0; i < 200000; ++i)
        for (long j = 0; j < 200000; ++j) s += i ^ j;
    return s;
}
constexpr long value = spin();
extern "C" __global__ void k(long* p) { *p = value; }
"""


@needs_confinement
def test_a_compile_past_its_limit_stops_in_the_compile_service() -> None:
    """The worker's watchdog ends the session at the compile limit; the compile service sees
    the worker hang up and kills the compiler it ran for it."""
    daemon = start_daemon(
        backend="emu", emu_devices=1, emu_memory=64 << 20, limits=Limits(compile_s=3.0)
    )
    try:
        gpupool.connect(daemon.address)
        seen: list[int] = []
        watching = threading.Event()

        def watch() -> None:  # the compiler did run, as the compiler's user
            while not watching.wait(0.2):
                seen.extend(compilers_of(confinement.compiler_uid()))

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            with pytest.raises(CompileError, match="did not compile within"):
                gpupool.Module.from_source(SLOW_COMPILE)
        finally:
            watching.set()
            watcher.join()
        assert seen
        deadline = time.monotonic() + 20
        while compilers_of(confinement.compiler_uid()) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert compilers_of(confinement.compiler_uid()) == []
    finally:
        gpupool.disconnect()
        daemon.stop()


@pytest.mark.skipif(seccomp.unsupported() is not None, reason=f"{seccomp.unsupported()}")
def test_the_filter_answers_each_system_call_as_documented() -> None:
    """The filter alone, in a forked child: what it refuses gets EPERM (clone3 ENOSYS)."""
    calls = {  # name: (syscall number, arguments, expected errno or 0)
        "execve": (59, (b"/bin/true", 0, 0), errno.EPERM),
        "ptrace": (101, (16, os.getppid(), 0, 0), errno.EPERM),
        "mount": (165, (b"none", b"/mnt", b"tmpfs", 0, 0), errno.EPERM),
        "bpf": (321, (0, 0, 0), errno.EPERM),
        "perf_event_open": (298, (0, 0, -1, -1, 0), errno.EPERM),
        "keyctl": (250, (0, 0), errno.EPERM),
        "unshare": (272, (0x10000000,), errno.EPERM),
        "socket(AF_INET)": (41, (2, 1, 0), errno.EPERM),
        "socket(AF_UNIX)": (41, (1, 1, 0), errno.EPERM),
        "TIOCSTI": (16, (0, 0x5412, 0), errno.EPERM),
        "PR_SET_DUMPABLE": (157, (4, 1, 0, 0, 0), errno.EPERM),
        "tkill": (200, (os.getpid(), 0), errno.EPERM),
        "fork (clone without CLONE_THREAD)": (56, (17, 0, 0, 0, 0), errno.EPERM),
        "clone3": (435, (0, 0), errno.ENOSYS),
        "kill(parent)": (62, (os.getpid(), 0), errno.EPERM),  # the child's parent: this process
        "getpid": (39, (), 0),
    }
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - reports through the pipe
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            seccomp.install()
            answers = {}
            for name, (number, args, _) in calls.items():
                ctypes.set_errno(0)
                result = libc.syscall(number, *args)
                answers[name] = ctypes.get_errno() if result == -1 else 0
            answers["kill(self)"] = 0 if libc.syscall(62, os.getpid(), 0) == 0 else -1
            os.write(write, json.dumps(answers).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        answers = json.loads(pipe.read())
    os.waitpid(child, 0)
    expected = {name: want for name, (_, _, want) in calls.items()} | {"kill(self)": 0}
    assert answers == expected
