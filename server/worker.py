"""The worker process: one session's CUDA context, and nothing else's.

A worker serves exactly one session and then ends, so a tenant's crash, leak or poisoned
context never reaches another tenant, and its memory goes back to the device when the
process exits. It is a fresh interpreter (``python -m gpupool.server.worker SPEC FD``), not a
multiprocessing child: that would re-run the main module of whatever program embeds the
daemon. It reads serialized requests from the socket FD and writes serialized replies back;
the front process shuts the socket's sending side to end the session.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection

from google.protobuf.message import DecodeError

from gpupool import logs
from gpupool.errors import CUDARuntimeError
from gpupool.proto import gpupool_pb2 as pb
from gpupool.server.backends import BackendConfig, open_backend
from gpupool.server.executor import SessionExecutor, error_message

log = logging.getLogger(__name__)

EXIT_POISONED = 3  # the context is unusable; the session has been told why
EXIT_NO_BACKEND = 4  # the backend did not start; the session has been told why


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker needs to know, passed on its command line as JSON."""

    backend: BackendConfig
    device: int
    slot: int
    ledger_fd: int | None  # the emulator's memory ledger, inherited
    log_level: str

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> WorkerSpec:
        fields = json.loads(text)
        return cls(**{**fields, "backend": BackendConfig(**fields["backend"])})


def serve(conn: Connection, spec: WorkerSpec) -> int:
    """Serve one session on ``conn``; the process's exit status."""
    try:
        backend, translate = open_backend(spec.backend, spec.device, spec.ledger_fd, spec.slot)
    except Exception as exc:
        log.exception("backend failed to start", extra=logs.fields(device=spec.device))
        _refuse(conn, CUDARuntimeError("cudaErrorInitializationError", f"{exc}"))
        return EXIT_NO_BACKEND
    executor = SessionExecutor(backend, translate)
    while (raw := _receive(conn)) is not None:
        try:
            request = pb.Request.FromString(raw)
        except DecodeError:
            request = pb.Request()  # names no call: the executor holds an error for it
        for reply in executor.handle(request):
            conn.send_bytes(reply.SerializeToString())
        if executor.poisoned:
            return EXIT_POISONED
    return 0


def _receive(conn: Connection) -> bytes | None:
    """The next request, or None when the session ends (or the front process went away)."""
    try:
        return conn.recv_bytes()
    except (EOFError, OSError):
        return None


def _refuse(conn: Connection, error: CUDARuntimeError) -> None:
    """Answer the session's first request with ``error``."""
    if _receive(conn) is not None:
        conn.send_bytes(pb.Reply(error=error_message(error)).SerializeToString())


def main(argv: list[str]) -> int:
    spec_json, fd = argv
    spec = WorkerSpec.from_json(spec_json)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the front process decides when workers end
    logs.configure(spec.log_level)
    return serve(Connection(int(fd)), spec)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
