"""Keepalives: a daemon or worker that stops answering (SIGSTOP) or dies ends the session
with ConnectionLost naming the daemon, the device and the cause, on every transport, within
the configured time (``GPUPOOL_TIMEOUT``) instead of leaving calls blocked."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import gpupool
from gpupool import runtime as rt
from gpupool.client.liveness import ENV_TIMEOUT
from gpupool.errors import ConnectError, ConnectionLost, ConnectionTimeout
from tests.conftest import GPUPOOL

TIMEOUT = 2.0


class DaemonProcess:
    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [
                *GPUPOOL, "daemon", "--listen", "127.0.0.1:0", "--backend", "emu",
                "--emu-devices", "1", "--emu-memory", "1GiB", "--log-level", "error",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        assert self.process.stdout is not None
        banner = self.process.stdout.readline()
        found = re.search(r" on (\S+) \(", banner)
        if found is None:
            self.end()
            raise AssertionError(f"the daemon did not start: {banner!r}")
        self.address = found.group(1)

    def workers(self) -> list[int]:
        """The daemon's worker processes (warm ones and the session's): its children, which
        any of its threads may have started."""
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                after_name = stat.read_bytes().rpartition(b")")[2].split()
            except OSError:
                continue  # ended meanwhile
            if int(after_name[1]) == self.process.pid:
                found.append(int(stat.parent.name))
        return found

    def end(self) -> None:
        pids = self.workers() if self.process.poll() is None else []
        for pid in [self.process.pid, *pids]:
            for sig in (signal.SIGCONT, signal.SIGKILL):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        self.process.wait(10)
        assert self.process.stdout is not None
        self.process.stdout.close()


@pytest.fixture
def remote(transport: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[DaemonProcess]:
    monkeypatch.setenv(ENV_TIMEOUT, str(TIMEOUT))
    daemon = DaemonProcess()
    try:
        gpupool.connect(daemon.address)
        yield daemon
    finally:
        gpupool.disconnect()
        daemon.end()


def lost_within(seconds: float) -> tuple[ConnectionLost, float]:
    """Calls until one raises ConnectionLost; that error and the seconds it took."""
    start = time.monotonic()
    x = np.ones(1 << 16, np.float32)
    while time.monotonic() - start < seconds:
        try:
            dx = rt.malloc(x.nbytes)
            rt.memcpy(dx, x.ctypes.data, x.nbytes, rt.memcpyHostToDevice)
            rt.memcpy(x.ctypes.data, dx, x.nbytes, rt.memcpyDeviceToHost)
            rt.free(dx)
        except ConnectionLost as exc:
            return exc, time.monotonic() - start
    raise AssertionError(f"no ConnectionLost within {seconds} s")


def test_a_stopped_daemon_is_found_within_the_timeout(remote: DaemonProcess) -> None:
    rt.malloc(16)  # the session is open
    os.kill(remote.process.pid, signal.SIGSTOP)
    error, took = lost_within(TIMEOUT + 5)
    assert isinstance(error, ConnectionTimeout), repr(error)
    assert f"daemon {remote.address}, device 0" in str(error)
    assert "has not answered for 2 s (GPUPOOL_TIMEOUT)" in str(error)
    assert TIMEOUT - 1 <= took <= TIMEOUT + 3  # counted from its last answer, <= 0.5 s before
    with pytest.raises(ConnectionLost, match="has not answered"):  # and stays so
        rt.malloc(16)
    # continued, then stopped again while a new session is being opened
    os.kill(remote.process.pid, signal.SIGCONT)
    gpupool.connect(remote.address)
    os.kill(remote.process.pid, signal.SIGSTOP)
    error, took = lost_within(TIMEOUT + 5)
    assert isinstance(error, ConnectionTimeout), repr(error)
    assert f"daemon {remote.address}, device 0" in str(error)
    assert took <= TIMEOUT + 3


def test_a_killed_daemon_is_found_within_seconds(remote: DaemonProcess) -> None:
    rt.malloc(16)
    os.kill(remote.process.pid, signal.SIGKILL)
    error, took = lost_within(10)
    assert f"daemon {remote.address}, device 0" in str(error), repr(error)
    assert took <= 3
    if not isinstance(error, ConnectError):  # grpc:// sees its stream break first
        assert "the daemon" in str(error)


def test_a_stopped_worker_is_found_within_the_timeout(remote: DaemonProcess) -> None:
    rt.malloc(16)
    for pid in remote.workers():
        os.kill(pid, signal.SIGSTOP)
    error, took = lost_within(TIMEOUT + 5)
    assert isinstance(error, ConnectionTimeout), repr(error)
    assert "its worker has been stopped for 2 s" in str(error)
    assert f"daemon {remote.address}, device 0" in str(error)
    assert took <= TIMEOUT + 3
