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
import threading
import uuid
from collections.abc import Iterator, Sequence

import grpc
from google.protobuf.message import DecodeError

from gpupool import __version__
from gpupool.errors import CUDARuntimeError
from gpupool.logs import fields
from gpupool.proto import gpupool_pb2 as pb
from gpupool.server.admission import Admission
from gpupool.server.backends.base import DeviceInfo
from gpupool.server.executor import error_message
from gpupool.server.pool import Worker, WorkerPool
from gpupool.server.worker import EXIT_NO_BACKEND, EXIT_POISONED

log = logging.getLogger(__name__)

SERVICE = "gpupool.v1.Daemon"
CLEAN_EXITS = (0, EXIT_POISONED, EXIT_NO_BACKEND)


class DaemonService:
    """Handlers of the ``Daemon`` service for one daemon."""

    def __init__(
        self,
        backend: str,
        devices: Sequence[DeviceInfo],
        pools: Sequence[WorkerPool],
        admission: Admission | None = None,
    ) -> None:
        self._backend = backend
        self._devices = list(devices)
        self._pools = list(pools)
        self.admission = admission or Admission()
        self.endpoints: list[str] = []

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
        return pb.DaemonInfo(
            version=__version__,
            backend=self._backend,
            devices=[device.to_message() for device in self._devices],
            endpoints=self.endpoints,
        )

    def session(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        """One session: open it on a worker, then relay until either side ends."""
        session_id = uuid.uuid4().hex[:12]
        try:
            first = next(requests)
            pool = self._pool_for(first)
            admitted = self.admission.admit(first, pool.device)  # refuses without a grant
            worker = _start_session(pool, admitted.request, admitted.worker_env)
        except StopIteration:
            return
        except CUDARuntimeError as exc:
            yield pb.Reply(error=error_message(exc)).SerializeToString()
            return
        context.add_callback(worker.kill)  # the client went away: end its worker now
        ended: list[CUDARuntimeError] = []  # or its lease ended: end it, and say why

        def end(why: CUDARuntimeError) -> None:
            ended.append(why)
            worker.kill()

        forget = self.admission.watch(admitted, pool.device, end)
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
            yield from self._replies(worker, session_id, ended)
        finally:
            forget()
            pool.release(worker)
            log.info("session closed", extra=fields(session=session_id, device=pool.device))

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

    def _replies(
        self, worker: Worker, session_id: str, ended: list[CUDARuntimeError]
    ) -> Iterator[bytes]:
        first = True
        for raw in worker.replies():
            if first:  # the reply to 'open': give the session its id
                reply = pb.Reply.FromString(raw)
                if reply.HasField("opened"):
                    reply.opened.session_id = session_id
                raw, first = reply.SerializeToString(), False
            yield raw
        code = worker.wait()
        if ended:  # the daemon ended the session: its last reply says why
            yield pb.Reply(error=error_message(ended[0])).SerializeToString()
            return
        if worker.killed or code in CLEAN_EXITS:
            return  # the client left, the session ended, or it already has its error
        reason = worker.exit_reason(code)
        log.warning("worker died", extra=fields(session=session_id, reason=reason))
        crash = CUDARuntimeError("cudaErrorIllegalAddress", f"the session's worker {reason}")
        yield pb.Reply(error=error_message(crash)).SerializeToString()


def _start_session(pool: WorkerPool, first: bytes, env: dict[str, str]) -> Worker:
    """A worker of ``pool`` that has taken the session's opening request.

    ``env`` non-empty asks for a fresh worker with it (MPS settings), not a warm one.
    """
    for _ in range(3):  # a warm worker may have died while idle: take another
        worker = pool.acquire(env)
        try:
            worker.send(first)
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
