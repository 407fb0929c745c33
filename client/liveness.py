"""Keepalives: a session whose daemon or worker stops answering ends within a bounded time.

Every wait in a call is a read on the session's connection, and a daemon that is stopped
(SIGSTOP), hung or cut off by the network never closes that connection: without a check the
call would wait as long as it stays so. So each context has a watchdog thread that, while it
has open sessions, asks their daemons every :func:`interval` seconds (``GetInfo`` on the
daemon's gRPC channel, naming the sessions) whether they answer and whether each session's
worker is stopped. A session is failed, and a call blocked on it raises
:class:`~gpupool.errors.ConnectionLost` naming the daemon, the device and the cause, when

- its daemon has not answered for ``GPUPOOL_TIMEOUT`` seconds (default 20):
  ``ConnectionTimeout``;
- its daemon refuses connections (killed, its port closed): ``ConnectError``, at the next
  check, about a second;
- its worker has been stopped for ``GPUPOOL_TIMEOUT`` seconds, or its daemon no longer
  knows it: ``ConnectionTimeout``, ``ConnectionLost``.

A worker that is busy (a long kernel, a compile) is running, not stopped, and is waited for,
as CUDA waits for it. A worker that dies, or a daemon whose sessions end, closes the
connection itself; the watchdog is for the silent cases.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import grpc

from gpupool.errors import (
    ConnectError,
    ConnectionLost,
    ConnectionTimeout,
    GpupoolError,
)
from gpupool.proto import gpupool_pb2 as pb
from gpupool.proto import gpupool_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

ENV_TIMEOUT = "GPUPOOL_TIMEOUT"
DEFAULT_TIMEOUT_S = 20.0
MAX_INTERVAL_S = 1.0


def timeout_from_env() -> float:
    """``GPUPOOL_TIMEOUT`` in seconds (default 20); GpupoolError naming a bad value."""
    text = os.environ.get(ENV_TIMEOUT, "")
    if not text:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise GpupoolError(f"{ENV_TIMEOUT}={text!r}: a number of seconds above 0")
    return value


def interval(timeout: float) -> float:
    """Seconds between checks: a few a timeout, at most a second apart."""
    return min(timeout / 4, MAX_INTERVAL_S)


class Watched(Protocol):
    """What the watchdog needs of a session (``gpupool.client.session.Session``)."""

    session_id: str
    label: str

    def fail(self, error: ConnectionLost) -> None: ...


@dataclass
class _Daemon:
    answered: float  # monotonic time of its last answer
    stopped_since: dict[str, float] = field(default_factory=dict)


class Watchdog:
    """The checks of one context's daemons, on a thread of their own while sessions are open.

    ``watched()`` gives, at each check, each daemon with open sessions (by address): its gRPC
    channel and those sessions.
    """

    def __init__(
        self,
        timeout: float,
        watched: Callable[[], Mapping[str, tuple[grpc.Channel, Sequence[Watched]]]],
    ) -> None:
        self.timeout = timeout
        self._watched = watched
        self._daemons: dict[str, _Daemon] = {}
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        """Start checking (again); a no-op while the thread runs."""
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._stopping.clear()
                self._thread = threading.Thread(target=self._run, name="keepalive", daemon=True)
                self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _run(self) -> None:
        period = interval(self.timeout)
        while not self._stopping.wait(period):
            watched = self._watched()
            for address, (channel, sessions) in watched.items():
                self._check(address, channel, sessions, period)
            for gone in set(self._daemons) - set(watched):
                del self._daemons[gone]

    def _check(
        self, address: str, channel: grpc.Channel, sessions: Sequence[Watched], period: float
    ) -> None:
        now = time.monotonic()
        state = self._daemons.setdefault(address, _Daemon(now))
        ids = [session.session_id for session in sessions if session.session_id]
        try:
            info = pb_grpc.DaemonStub(channel).GetInfo(
                pb.InfoRequest(sessions=ids), timeout=max(period, 0.5)
            )
        except grpc.RpcError as exc:
            details = (exc.details() or "").lower()
            if exc.code() == grpc.StatusCode.UNAVAILABLE and "refused" in details:
                self._fail(sessions, ConnectError, "the daemon is gone (connection refused)")
            elif time.monotonic() - state.answered >= self.timeout:
                self._fail(
                    sessions,
                    ConnectionTimeout,
                    f"the daemon has not answered for {self.timeout:g} s ({ENV_TIMEOUT}):"
                    " stopped, hung or cut off",
                )
            return
        except ValueError:  # the channel was closed: the context is detaching it
            return
        state.answered = now = time.monotonic()
        stopped, unknown = set(info.stopped_sessions), set(info.unknown_sessions)
        for session in sessions:
            sid = session.session_id
            if sid in unknown:
                self._fail([session], ConnectionLost, "the daemon no longer serves this session")
            elif sid in stopped:
                since = state.stopped_since.setdefault(sid, now)
                if now - since >= self.timeout:
                    self._fail(
                        [session],
                        ConnectionTimeout,
                        f"its worker has been stopped for {self.timeout:g} s ({ENV_TIMEOUT})",
                    )
            else:
                state.stopped_since.pop(sid, None)

    def _fail(self, sessions: Sequence[Watched], kind: type[ConnectionLost], cause: str) -> None:
        for session in sessions:
            log.warning(f"{session.label}: {cause}")
            session.fail(kind(f"{session.label}: {cause}"))
