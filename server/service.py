"""The daemon's front door: the gRPC service that routes each session to its worker.

The front process never touches a device. It answers ``GetInfo`` itself; for ``Session`` it
checks the opening request, takes a warm worker for the device and then only moves bytes:
requests from the client to the worker, replies back, without decoding them. A worker that
dies takes its session with it: the client gets one error reply naming why (its CUDA error
when it ended on a sticky error, ``cudaErrorIllegalAddress`` when it crashed, the lease's end
when the daemon ended it) and the stream ends; every other session goes on.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import grpc
from google.protobuf.message import DecodeError

from gpupool import __version__
from gpupool.errors import CUDARuntimeError
from gpupool.logs import fields
from gpupool.proto import gpupool_pb2 as pb
from gpupool.server.admission import Admission, Admitted
from gpupool.server.backends.base import DeviceInfo
from gpupool.server.executor import error_message
from gpupool.server.metrics import DaemonMetrics
from gpupool.server.pool import Worker, WorkerPool
from gpupool.server.worker import CLEAN_EXITS
from gpupool.transport.frames import MESSAGE, FrameSocket

log = logging.getLogger(__name__)

SERVICE = "gpupool.v1.Daemon"
# A session's opening request must arrive this soon after it connects, on every transport: a
# stranger's idle connections or streams hold nothing for longer.
OPENING_DEADLINE_S = 10.0
# Streams (gRPC, UCX) waiting for their opening request at once; more are refused at once, so
# idle streams can never take the threads that GetInfo and open sessions need.
MAX_OPENING = 512
HANGUP_POLL_S = 0.5  # without pidfds (old kernels): how often a frame session's front looks


class SessionCall(Protocol):
    """What a session needs of its call: gRPC's ServicerContext, or ucx's stand-in."""

    def add_callback(self, callback: Callable[[], None]) -> bool: ...

    def peer(self) -> str: ...

    def cancel(self) -> None:
        """End the call from the daemon's side: its request iterator stops."""


class DaemonService:
    """Handlers of the ``Daemon`` service for one daemon."""

    def __init__(
        self,
        backend: str,
        devices: Sequence[DeviceInfo],
        pools: Sequence[WorkerPool],
        admission: Admission | None = None,
        metrics: DaemonMetrics | None = None,
    ) -> None:
        self._backend = backend
        self.metrics = metrics or DaemonMetrics()
        self._devices = list(devices)
        self._pools = list(pools)
        self.admission = admission or Admission()
        self.endpoints: list[str] = []
        self._keyed: dict[bytes, _Keyed] = {}  # open sessions, by SessionOpened.key
        self._open: dict[str, Worker] = {}  # every open session, by id: for liveness checks
        self._opening = threading.BoundedSemaphore(MAX_OPENING)

    def handler(self) -> grpc.GenericRpcHandler:
        """The gRPC handler; ``Session`` passes raw bytes, so the front never decodes them."""
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "GetInfo": grpc.unary_unary_rpc_method_handler(
                    self.get_info,
                    request_deserializer=pb.InfoRequest.FromString,
                    response_serializer=pb.DaemonInfo.SerializeToString,
                ),
                "Session": grpc.stream_stream_rpc_method_handler(self.session),
            },
        )

    def get_info(self, request: pb.InfoRequest, context: grpc.ServicerContext) -> pb.DaemonInfo:
        """What this daemon has; for a client's liveness check (``request.sessions``), also
        which of its sessions have a stopped worker and which this daemon does not serve."""
        stopped, unknown = [], []
        for session_id in request.sessions:
            worker = self._open.get(session_id)
            if worker is None:
                unknown.append(session_id)
            elif process_stopped(worker.pid):
                stopped.append(session_id)
        return pb.DaemonInfo(
            version=__version__,
            backend=self._backend,
            devices=[device.to_message() for device in self._devices],
            endpoints=self.endpoints,
            stopped_sessions=stopped,
            unknown_sessions=unknown,
        )

    def session(
        self, requests: Iterator[bytes], context: SessionCall, transport: str = "grpc"
    ) -> Iterator[bytes]:
        """One session: open it on a worker, then relay until either side ends."""
        session_id, key = uuid.uuid4().hex[:12], os.urandom(16)
        try:
            pool, admitted = self._admit(self._opening_request(requests, context))
            worker = _start_session(pool, lambda worker: worker.send(admitted.request), admitted)
        except (StopIteration, grpc.RpcError):
            return  # the client left before opening
        except CUDARuntimeError as exc:
            self.metrics.session_refused(transport, exc.name)
            yield pb.Reply(error=error_message(exc)).SerializeToString()
            return
        closed = self.metrics.session_opened(pool, worker.slot, transport, admitted.memory)
        self._keyed[key] = _Keyed(worker, pool.device, admitted.allocation)  # for peer links
        context.add_callback(worker.kill)  # the client went away: end its worker now
        self._open[session_id] = worker
        ended, forget = self._watch(admitted, pool.device, worker)  # or its lease ends
        log.info(
            "session opened",
            extra=fields(
                session=session_id, device=pool.device, pid=worker.pid, peer=context.peer()
            ),
        )
        try:
            threading.Thread(
                target=_pump, args=(requests, worker), name=f"pump-{session_id}", daemon=True
            ).start()
            yield from self._replies(worker, session_id, key, ended)
        finally:
            forget()
            del self._keyed[key]
            self._open.pop(session_id, None)
            pool.release(worker)
            closed()
            log.info("session closed", extra=fields(session=session_id, device=pool.device))

    def serve_connection(self, frames: FrameSocket, first: bytes, shared_memory: bool) -> None:
        """One ``tcp://`` or ``shm://`` session: its worker takes the connection itself.

        The front keeps its copy of the socket only to tell the client when the worker dies
        (the worker's own replies never pass through here), and waits for the worker's end.
        """
        session_id, key = uuid.uuid4().hex[:12], os.urandom(16)

        def deliver(worker: Worker) -> None:
            # before the client can learn the key and attach
            self._keyed[key] = _Keyed(worker, pool.device, admitted.allocation)
            self._open[session_id] = worker  # and before it can ask whether it is alive
            handover = pb.Handover(
                session_id=session_id,
                key=key,
                first=admitted.request,
                shared_memory=shared_memory,
            )
            worker.hand_over(frames.sock, handover)

        try:
            pool, admitted = self._admit(first)
            worker = _start_session(pool, deliver, admitted)
        except CUDARuntimeError as exc:
            self._keyed.pop(key, None)
            self._open.pop(session_id, None)
            self.metrics.session_refused("shm" if shared_memory else "tcp", exc.name)
            refuse(frames, exc)
            return
        transport = "shm" if shared_memory else "tcp"
        closed = self.metrics.session_opened(pool, worker.slot, transport, admitted.memory)
        log.info(
            "session opened",
            extra=fields(session=session_id, device=pool.device, pid=worker.pid, via=transport),
        )
        ended, forget = self._watch(admitted, pool.device, worker)  # its lease ends
        try:
            _wait_or_hang_up(worker, frames.sock)
            notice = _last_word(worker, session_id, ended)
            if notice is not None:
                frames.send(MESSAGE, notice)
        except OSError:
            pass  # the client is gone too
        finally:
            forget()
            self._open.pop(session_id, None)
            del self._keyed[key]
            frames.close()
            pool.release(worker)
            closed()
            log.info("session closed", extra=fields(session=session_id, device=pool.device))

    def attach_stripe(self, frames: FrameSocket, attach: pb.AttachStripe) -> None:
        """Give an open session's worker another connection for its payloads."""
        keyed = self._keyed.get(attach.key)
        if keyed is None:
            refuse(
                frames, CUDARuntimeError("cudaErrorInvalidValue", "no open session has that key")
            )
            return
        try:
            keyed.worker.hand_over(frames.sock, pb.Handover(stripe=attach.stripe))
        except OSError:
            pass  # the session ended meanwhile; closing tells the client
        finally:
            frames.close()

    def attach_peer(self, frames: FrameSocket, attach: pb.AttachPeer, shared_memory: bool) -> None:
        """Give an open session's worker a connection of another worker's peer link, if the
        connection holds that session's key and (on a pooled daemon) a grant of its
        allocation: a tenant's workers reach only that tenant's devices."""
        keyed = self._keyed.get(attach.key)
        try:
            if keyed is None:
                raise CUDARuntimeError("cudaErrorInvalidValue", "no open session has that key")
            self.admission.admit_peer(attach.token, keyed.device, keyed.allocation)
            peer = pb.PeerHandover(link=attach.link, stripe=attach.stripe, stripes=attach.stripes)
            handover = pb.Handover(peer=peer, shared_memory=shared_memory)
            keyed.worker.hand_over(frames.sock, handover)
        except CUDARuntimeError as exc:
            log.info("peer link refused", extra=fields(reason=exc.detail))
            refuse(frames, exc)
            return
        except OSError:
            pass  # the session ended meanwhile; closing tells the peer
        frames.close()

    def _opening_request(self, requests: Iterator[bytes], call: SessionCall) -> bytes:
        """A relayed session's first request, within the opening deadline; refused at once
        when too many streams are waiting for theirs.

        StopIteration (or gRPC's RpcError once cancelled) when the client sends none."""
        if not self._opening.acquire(blocking=False):
            raise CUDARuntimeError(
                "cudaErrorDevicesUnavailable",
                f"{MAX_OPENING} sessions are already opening on this daemon; try again",
            )
        late = threading.Timer(OPENING_DEADLINE_S, call.cancel)
        late.daemon = True
        late.start()
        try:
            return next(requests)
        finally:
            late.cancel()
            self._opening.release()

    def _admit(self, first: bytes) -> tuple[WorkerPool, Admitted]:
        """The device pool of a session's opening request and its admission (the request as
        the worker gets it); refuses a session without a valid grant where one is needed.

        Every transport opens its sessions through here."""
        pool = self._pool_for(first)
        return pool, self.admission.admit(first, pool.device)

    def _pool_for(self, first: bytes) -> WorkerPool:
        """The pool of the device the opening request names; refuses any other request."""
        try:
            request = pb.Request.FromString(first)
        except DecodeError:
            request = pb.Request()
        if not request.HasField("open"):
            raise CUDARuntimeError("cudaErrorInvalidValue", "a session must start with 'open'")
        device = request.open.device
        if device >= len(self._pools):
            raise CUDARuntimeError(
                "cudaErrorInvalidDevice",
                f"device {device} does not exist (this daemon has {len(self._pools)})",
            )
        return self._pools[device]

    def _watch(
        self, admitted: Admitted, device: int, worker: Worker
    ) -> tuple[list[CUDARuntimeError], Callable[[], None]]:
        """Have the session's worker ended when its lease ends. Returns the list that then
        holds why (for the session's last reply) and the callable that stops watching."""
        ended: list[CUDARuntimeError] = []

        def end(why: CUDARuntimeError) -> None:
            ended.append(why)
            worker.kill()

        return ended, self.admission.watch(admitted, device, end)

    def _replies(
        self, worker: Worker, session_id: str, key: bytes, ended: list[CUDARuntimeError]
    ) -> Iterator[bytes]:
        first = True
        for raw in worker.replies():
            if first:  # the reply to 'open': give the session its id and key
                reply = pb.Reply.FromString(raw)
                if reply.HasField("opened"):
                    reply.opened.session_id = session_id
                    reply.opened.key = key
                raw, first = reply.SerializeToString(), False
            yield raw
        notice = _last_word(worker, session_id, ended)
        if notice is not None:
            yield notice


@dataclass(frozen=True)
class _Keyed:
    """An open session as other connections name it: its worker, device and allocation."""

    worker: Worker
    device: int
    allocation: str  # "" on a bare daemon


def process_stopped(pid: int) -> bool:
    """True when process ``pid`` is stopped (SIGSTOP, SIGTSTP, a debugger's stop): its state
    in ``/proc/PID/stat``. False where there is no /proc (the check then finds nothing)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields_after_name = stat.read().rpartition(b")")[2].split()
    except OSError:
        return False
    return bool(fields_after_name) and fields_after_name[0] in (b"T", b"t")


def refuse(frames: FrameSocket, why: CUDARuntimeError) -> None:
    """Send a connection its one error reply and close it; a peer that has already gone is
    no concern of the daemon's (a stranger's refusal must not print a traceback)."""
    try:
        frames.send(MESSAGE, pb.Reply(error=error_message(why)).SerializeToString())
    except OSError as exc:
        log.debug("refusal not delivered", extra=fields(reason=repr(exc)))
    finally:
        frames.close()


def _last_word(worker: Worker, session_id: str, ended: list[CUDARuntimeError]) -> bytes | None:
    """The session's last reply when the daemon ended it (its lease ended) or its worker died
    unannounced (a crash); None when the client left or already has its error."""
    code = worker.wait()
    if ended:
        return pb.Reply(error=error_message(ended[0])).SerializeToString()
    if worker.killed or code in CLEAN_EXITS:
        return None  # the client left, the session ended, or it already has its error
    reason = worker.exit_reason(code)
    log.warning("worker died", extra=fields(session=session_id, reason=reason))
    crash = CUDARuntimeError("cudaErrorIllegalAddress", f"the session's worker {reason}")
    return pb.Reply(error=error_message(crash)).SerializeToString()


def _wait_or_hang_up(worker: Worker, client: socket.socket) -> None:
    """Wait for a frame session's worker to end; if the client hangs up first and the worker
    does not follow within its grace period (it is deep in a kernel or a compile, and reads
    nothing), end it."""
    events = select.poll()
    events.register(client.fileno(), select.POLLRDHUP)
    exited: int | None = None
    try:
        exited = os.pidfd_open(worker.pid)  # readable once the worker has ended
        events.register(exited, select.POLLIN)
    except OSError:  # an old kernel: look again now and then
        pass
    try:
        while worker.wait(0) is None:
            ready = events.poll(None if exited is not None else HANGUP_POLL_S * 1000)
            if any(fd == client.fileno() for fd, _ in ready):
                if worker.wait(worker.kill_grace) is None:
                    log.info("client gone, worker busy: ending it", extra=fields(pid=worker.pid))
                    worker.kill()
                break
        worker.wait(None)
    finally:
        if exited is not None:
            os.close(exited)


def _start_session(
    pool: WorkerPool, deliver: Callable[[Worker], None], admitted: Admitted
) -> Worker:
    """A worker of ``pool`` to which ``deliver`` has given the session's opening, its memory
    counted with its allocation's.

    A non-empty ``worker_env`` asks for a fresh worker with it (MPS settings), not a warm one.
    """
    for _ in range(3):  # a warm worker may have died while idle: take another
        worker = pool.acquire(admitted.worker_env, admitted.allocation)
        try:
            deliver(worker)
            return worker
        except OSError:
            pool.release(worker)
    raise CUDARuntimeError("cudaErrorInitializationError", "workers fail to start; see daemon log")


def _pump(requests: Iterator[bytes], worker: Worker) -> None:
    """Relay the client's requests to the worker until the client closes or either side dies."""
    try:
        for raw in requests:
            worker.send(raw)
        worker.end_session()
    except Exception as exc:  # the client or the worker went away; the reply side handles both
        log.debug("relay ended", extra=fields(reason=repr(exc)))
