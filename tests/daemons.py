"""Daemons in processes of their own, for tests that kill, stop or starve them, and the raw
frame sessions such tests hold (a stranger's view: no client library)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

from gpupool.proto import gpupool_pb2 as pb
from gpupool.server.daemon import Daemon
from gpupool.transport.frames import MESSAGE, FrameSocket
from tests.conftest import GPUPOOL


def tcp_address(daemon_or_endpoints: Daemon | list[str]) -> tuple[str, int]:
    endpoints = getattr(daemon_or_endpoints, "endpoints", daemon_or_endpoints)
    url = urlsplit(next(url for url in endpoints if url.startswith("tcp://")))
    assert url.hostname is not None and url.port is not None
    return url.hostname, url.port


_LIMITED = (
    "import os, resource, sys; limit = int(sys.argv[1]);"
    " resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit));"
    " os.execv(sys.argv[2], sys.argv[2:])"
)


class DaemonProcess:
    """``gpupool daemon`` in a process of its own (its own process group)."""

    def __init__(self, *options: str, nofile: int | None = None, env: dict | None = None):
        argv = [*GPUPOOL, "daemon", "--listen", "127.0.0.1:0", "--backend", "emu"]
        argv += ["--emu-devices", "1", "--emu-memory", "256MiB", *options]
        if nofile is not None:  # a descriptor limit of its own, set before it execs itself
            argv = [sys.executable, "-c", _LIMITED, str(nofile), *argv]
        self.process = subprocess.Popen(  # no preexec_fn: this process runs gRPC threads
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        assert self.process.stdout is not None
        first = self.process.stdout.readline()
        match = re.search(r"on (\S+) \(", first)
        assert match, first + self.process.stderr.read() if self.process.stderr else first
        self.address = match.group(1)
        self.endpoints = self.process.stdout.readline().split()[1:]

    def workers(self) -> list[int]:
        """Pids of the daemon's worker processes."""
        children = []
        for task in Path(f"/proc/{self.process.pid}/task").iterdir():
            with contextlib.suppress(OSError):
                children += [int(pid) for pid in (task / "children").read_text().split()]
        return children

    def stop(self, timeout: float = 30) -> str:
        """SIGTERM; its log (stderr) once it has exited."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        _, err = self.process.communicate(timeout=timeout)
        return err


def alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/stat").read_text().split(") ")[1].split()[0]
    except OSError:
        return False
    return status != "Z"


def gone_within(pids: list[int], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while any(alive(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def open_raw_tcp(endpoints: list[str]) -> FrameSocket:
    frames = FrameSocket(socket.create_connection(tcp_address(endpoints)))
    frames.send(MESSAGE, pb.Request(wait=True, open=pb.OpenSession()).SerializeToString())
    _kind, message, _ = frames.receive()
    assert pb.Reply.FromString(message).HasField("opened")
    return frames


def call(frames: FrameSocket, request: pb.Request) -> pb.Reply:
    request.wait = True
    frames.send(MESSAGE, request.SerializeToString())
    _kind, message, _ = frames.receive()
    return pb.Reply.FromString(message)
