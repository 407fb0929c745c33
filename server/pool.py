"""Worker processes of one device: a few kept warm, each used by one session, then retired.

A fresh worker costs seconds on a GPU (importing CuPy, creating a context), so each device
keeps ``warm`` started workers ready; opening a session takes one and starts a replacement
in the background. Workers are never reused: a session's end is its worker's end.
"""

from __future__ import annotations

import itertools
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection

from gpupool.errors import CUDARuntimeError
from gpupool.logs import fields
from gpupool.proto import gpupool_pb2 as pb
from gpupool.server.backends import BackendConfig
from gpupool.server.backends.emu import MemoryLedger
from gpupool.server.backends.emu_compile_service import CompileService
from gpupool.server.confinement import worker_environment
from gpupool.server.ledger import QuotaLedger
from gpupool.server.lifecycle import Limits
from gpupool.server.transports.channels import send_handover
from gpupool.server.worker import WorkerSpec

log = logging.getLogger(__name__)

MAX_WORKERS = 256  # sessions at once on one device
STOP_GRACE_S = 5.0  # how long a session's end may take its worker before it is stopped


class Worker:
    """The front process's handle on one worker process and its socket."""

    def __init__(
        self,
        process: subprocess.Popen[bytes],
        sock: socket.socket,
        handoffs: socket.socket,
        slot: int,
        kill_grace: float,
    ) -> None:
        self.process = process
        self.slot = slot
        self.kill_grace = kill_grace
        self.killed = False  # ended on purpose: its client went away
        self.allocation = ""  # whose session it serves
        self._socket = sock
        self._handoffs = handoffs
        self._conn = Connection(os.dup(sock.fileno()))
        self._send_lock = threading.Lock()
        self._closed = False

    @property
    def pid(self) -> int:
        return self.process.pid

    def send(self, raw: bytes) -> None:
        """Pass one serialized request on; BrokenPipeError once the worker has ended."""
        with self._send_lock:
            if self._closed:
                raise BrokenPipeError("the session's worker is gone")
            self._conn.send_bytes(raw)

    def hand_over(self, client: socket.socket, handover: pb.Handover) -> None:
        """Give the worker a client connection of its own (``tcp://``, ``shm://``)."""
        with self._send_lock:
            if self._closed:
                raise BrokenPipeError("the session's worker is gone")
            send_handover(self._handoffs, handover, client)

    def replies(self) -> Iterator[bytes]:
        """The worker's serialized replies, until it ends."""
        while True:
            try:
                yield self._conn.recv_bytes()
            except (EOFError, OSError):
                return

    def end_session(self) -> None:
        """Tell the worker that no request follows: it finishes its work and exits."""
        with self._send_lock:
            if not self._closed:
                self._socket.shutdown(socket.SHUT_WR)

    def kill(self) -> None:
        """End the worker now (its client is gone, its lease ended, the daemon stops): SIGTERM,
        then SIGKILL if it is still there after the grace period (a kernel can ignore
        SIGTERM, or be deep in native code). Returns at once."""
        self.killed = True
        if self.process.poll() is None:
            self.process.terminate()
            timer = threading.Timer(self.kill_grace, self._kill_now)
            timer.daemon = True
            timer.start()

    def _kill_now(self) -> None:
        if self.process.poll() is None:
            log.info("worker ignored SIGTERM: killed", extra=fields(pid=self.pid))
            self.process.kill()

    def wait(self, timeout: float | None = STOP_GRACE_S) -> int | None:
        """The worker's exit status once it has ended, None if it is still running."""
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def end_leftovers(self) -> None:
        """Kill what the ended worker left behind in its process group (a compiler it ran,
        a process a kernel forked): nothing of a session outlives its worker."""
        try:
            os.killpg(self.pid, signal.SIGKILL)  # the worker leads its own group
        except (ProcessLookupError, PermissionError):
            pass  # nothing left

    @staticmethod
    def exit_reason(code: int | None) -> str:
        """How a worker with exit status ``code`` ended, for the session's error message."""
        if code is None:
            return "still running"
        if code < 0:
            return f"ended by signal {signal.Signals(-code).name}"
        return f"exited with status {code}"

    def close(self) -> None:
        """Close the socket; a later ``send`` raises rather than write to a reused descriptor."""
        with self._send_lock:
            self._closed = True
            self._conn.close()
            self._socket.close()
            self._handoffs.close()


class WorkerPool:
    """The workers of one device.

    Workers are started from one long-lived thread of the pool's: a worker asks to be killed
    when the thread that started it ends (``PR_SET_PDEATHSIG`` follows the thread, not the
    process), so that thread must last as long as the front.
    """

    def __init__(
        self,
        config: BackendConfig,
        device: int,
        warm: int,
        log_level: str,
        limits: Limits | None = None,
        pooled: bool = False,
        compile_service: CompileService | None = None,  # of confined emulator workers
    ) -> None:
        self.device = device
        self.limits = limits or Limits()
        self._config = config
        self._compile_service = compile_service
        self._warm = warm
        self._log_level = log_level
        self._pooled = pooled
        self.ledger = (
            MemoryLedger.create(config.emu_memory, MAX_WORKERS) if config.kind == "emu" else None
        )
        # Bytes each worker holds, by allocation: one grant's quota spans its sessions here.
        self.quotas = QuotaLedger.create(MAX_WORKERS)
        self._groups: dict[str, int] = {}  # allocation -> its group in the quota ledger
        self._next_group = itertools.count(1)
        self._spawner = ThreadPoolExecutor(1, thread_name_prefix=f"spawn-{device}")
        self._lock = threading.Lock()
        self._free_slots = list(range(MAX_WORKERS - 1, -1, -1))
        self._idle: list[Worker] = []
        self._busy: set[Worker] = set()
        self._closed = False
        self._refill()

    def acquire(self, env: dict[str, str] | None = None, allocation: str = "") -> Worker:
        """A started worker for a new session of ``allocation`` ("" for none), its memory
        counted with that allocation's other sessions; with ``env``, a fresh one started
        with it."""
        with self._lock:
            if self._closed:
                raise CUDARuntimeError("cudaErrorDevicesUnavailable", "the daemon is stopping")
            while self._idle and not env:  # warm workers were started without env
                worker = self._idle.pop(0)
                if worker.process.poll() is None:
                    break
                worker.close()
                self._reap(worker)
            else:
                worker = self._spawn(env)
            self._busy.add(worker)
            if allocation and allocation not in self._groups:
                self._groups[allocation] = next(self._next_group)
            worker.allocation = allocation
            self.quotas.assign(worker.slot, self._groups.get(allocation, 0))
        threading.Thread(target=self._refill, name=f"refill-{self.device}", daemon=True).start()
        return worker

    def release(self, worker: Worker) -> None:
        """Wait for a worker whose session has ended to exit (killing it if it lingers)."""
        if worker.wait() is None:
            worker.kill()
            worker.wait(None)
        worker.end_leftovers()
        worker.close()
        with self._lock:
            if worker in self._busy:  # not yet reaped by close()
                self._busy.discard(worker)
                self._reap(worker)

    def busy_pids(self) -> list[int]:
        """The process ids of the workers serving sessions now."""
        with self._lock:
            return [worker.pid for worker in self._busy]

    def close(self) -> None:
        """End every worker of this device."""
        with self._lock:
            self._closed = True
            workers = self._idle + list(self._busy)
            self._idle.clear()
        for worker in workers:
            worker.kill()
        for worker in workers:
            worker.wait(None)
            worker.end_leftovers()
            worker.close()
        with self._lock:
            for worker in workers:
                self._busy.discard(worker)
                self._reap(worker)
            self._busy.clear()
        self._spawner.shutdown()
        self.quotas.close()
        if self.ledger is not None:
            self.ledger.close()

    def _refill(self) -> None:
        with self._lock:
            while not self._closed and len(self._idle) < self._warm:
                try:
                    self._idle.append(self._spawn())
                except CUDARuntimeError:
                    log.warning("no slot for a warm worker", extra=fields(device=self.device))
                    return

    def _spawn(self, env: dict[str, str] | None = None) -> Worker:
        """Start a worker (with ``env`` added to its environment); the caller holds the lock."""
        if not self._free_slots:
            raise CUDARuntimeError(
                "cudaErrorDevicesUnavailable", f"device {self.device} has {MAX_WORKERS} sessions"
            )
        slot = self._free_slots.pop()
        try:
            return self._spawner.submit(self._start, slot, env).result()
        except BaseException:
            self._free_slots.append(slot)
            raise

    def _start(self, slot: int, env: dict[str, str] | None) -> Worker:
        """Start the worker of ``slot``, on the spawner thread."""
        compiles = self._compile_service.connect() if self._compile_service else None
        spec = WorkerSpec(
            self._config,
            self.device,
            slot,
            self.ledger.fileno() if self.ledger else None,
            self.quotas.fileno(),
            self._log_level,
            front_pid=os.getpid(),
            pooled=self._pooled,
            limits=self.limits,
            compile_fd=compiles.fileno() if compiles else None,
        )
        ours, theirs = socket.socketpair()
        # Client connections of tcp:// and shm:// sessions go to the worker on a second pair
        # (one message, one descriptor each).
        our_handoffs, their_handoffs = socket.socketpair(type=socket.SOCK_SEQPACKET)
        with theirs, their_handoffs:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "gpupool.server.worker",
                    spec.to_json(),
                    str(theirs.fileno()),
                    str(their_handoffs.fileno()),
                ],
                pass_fds=[
                    theirs.fileno(),
                    their_handoffs.fileno(),
                    self.quotas.fileno(),
                    *([self.ledger.fileno()] if self.ledger else []),
                    *([compiles.fileno()] if compiles else []),
                ],
                # Its own session: a Ctrl-C or a signal to the daemon's process group does not
                # reach workers; the front ends them, and they end when it goes away.
                start_new_session=True,
                stdin=subprocess.DEVNULL,
                env=worker_environment(env),  # an allow-list: no secret reaches a tenant
            )
        if compiles is not None:
            compiles.close()
        log.debug("worker started", extra=fields(device=self.device, pid=process.pid, slot=slot))
        return Worker(process, ours, our_handoffs, slot, self.limits.stop_grace_s)

    def _reap(self, worker: Worker) -> None:
        """Give an exited worker's slot and accounted memory back; the caller holds the lock."""
        if self.ledger is not None:
            self.ledger.clear(worker.slot)
        self.quotas.clear(worker.slot)
        allocation = worker.allocation
        if allocation and not any(each.allocation == allocation for each in self._busy):
            self._groups.pop(allocation, None)  # its last session here has ended
        self._free_slots.append(worker.slot)
