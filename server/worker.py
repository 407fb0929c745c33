"""The worker process: one session's CUDA context, and nothing else's.

A worker serves exactly one session and then ends, so a tenant's crash, leak or poisoned
context never reaches another tenant, and its memory goes back to the device when the
process exits. It is a fresh interpreter (``python -m gpupool.server.worker SPEC FD``), not a
multiprocessing child: that would re-run the main module of whatever program embeds the
daemon. It reads serialized requests from the socket FD and writes serialized replies back;
the front process shuts the socket's sending side to end the session.
"""

from __future__ import annotations

import functools
import json
import logging
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection

from gpupool import logs
from gpupool.errors import ConnectionLost, CUDARuntimeError
from gpupool.proto import gpupool_pb2 as pb
from gpupool.server import confinement, lifecycle
from gpupool.server.backends import BackendConfig, Translate, open_backend
from gpupool.server.backends.base import Backend
from gpupool.server.counters import SlotCounters
from gpupool.server.deferred import StreamThread
from gpupool.server.executor import DeviceData, SessionExecutor, error_message
from gpupool.server.host_memory import SharedHostMemory, share_limit
from gpupool.server.ledger import QuotaLedger
from gpupool.server.lifecycle import Limits, Watchdog
from gpupool.server.peers import PEER_TIMEOUT_S, InboundLinks, Peers
from gpupool.server.transports.channels import (
    Channel,
    FrameChannel,
    RelayChannel,
    receive_handover,
    take_handovers,
)

log = logging.getLogger(__name__)

EXIT_POISONED = 3  # the context is unusable; the session has been told why
EXIT_NO_BACKEND = 4  # the backend did not start; the session has been told why
EXIT_ORPHANED = 5  # the front that started it is gone: nobody would supervise the session
# any other status is a crash (an orphan has no front left to count it)
CLEAN_EXITS = (0, EXIT_POISONED, EXIT_NO_BACKEND, EXIT_ORPHANED)


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker needs to know, passed on its command line as JSON."""

    backend: BackendConfig
    device: int
    slot: int
    ledger_fd: int | None  # the emulator's memory ledger, inherited
    quota_fd: int  # the device's quota ledger (a QuotaLedger), inherited
    log_level: str
    front_pid: int  # the front process that started this worker
    pooled: bool = False  # the daemon is in a pool: every session has a quota
    limits: Limits = field(default_factory=lambda: Limits())
    compile_fd: int | None = None  # a confined emulator worker's compile service, inherited
    counters_fd: int | None = None  # the device's counter table (counters.py), inherited

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> WorkerSpec:
        fields = json.loads(text)
        backend, limits = BackendConfig(**fields["backend"]), Limits(**fields["limits"])
        return cls(**{**fields, "backend": backend, "limits": limits})


def serve(conn: Connection, handoffs: socket.socket, spec: WorkerSpec) -> int:
    """Serve one session, arriving on ``conn`` or ``handoffs``; the process's exit status."""
    try:
        backend, translate = open_backend(
            spec.backend, spec.device, spec.ledger_fd, spec.slot, spec.compile_fd
        )
    except Exception as exc:
        log.exception("backend failed to start", extra=logs.fields(device=spec.device))
        channel = _first_contact(conn, handoffs, None)
        error = CUDARuntimeError("cudaErrorInitializationError", f"{exc}")
        if channel is not None and channel.next() is not None:
            channel.send(pb.Reply(error=error_message(error)))
        return EXIT_NO_BACKEND
    account = QuotaLedger.attach(spec.quota_fd).account(spec.slot)  # reopened: still as root
    counters = (
        SlotCounters.attach(spec.counters_fd, spec.slot)  # likewise
        if spec.counters_fd is not None
        else SlotCounters.detached()  # a worker started by hand: nobody reads its counts
    )
    if spec.backend.confined:  # an emulator worker of a daemon that confines them
        confinement.confine()
        # Taking another user clears the parent-death signal: ask for it again.
        if not lifecycle.die_with(spec.front_pid):
            return EXIT_ORPHANED
    channel = _first_contact(conn, handoffs, (backend, translate))
    if channel is None:
        return 0
    inbound = InboundLinks(backend.staging, backend.register_host, backend.unregister_host)
    peers = Peers(inbound, backend.staging)
    attach_stripe = channel.attach_stripe if isinstance(channel, FrameChannel) else _refuse
    take_handovers(handoffs, attach_stripe, inbound.add)
    executor = SessionExecutor(
        backend, translate, channel.host_memory, account, spec.pooled, counters, peers
    )
    sending = threading.Lock()  # replies come from this loop and from the stream thread

    def send(reply: pb.Reply | DeviceData) -> None:
        with sending:
            channel.send(reply)

    watchdog = Watchdog(
        spec.limits, lambda error: send(pb.Reply(error=error_message(error))), EXIT_POISONED
    )
    stream = StreamThread(executor, send)
    try:
        while (item := channel.next()) is not None:
            started = time.perf_counter_ns()
            request, payload = item
            if payload:
                stream.drain(PEER_TIMEOUT_S)
                receive = functools.partial(channel.receive_payload, payload)
                replies: Iterator[pb.Reply | DeviceData] = executor.handle_payload(
                    request, payload, receive
                )
            else:
                replies = stream.dispatch(request)
            for reply in _timed(replies, watchdog, request.HasField("module_load")):
                send(reply)
            counters.busy(time.perf_counter_ns() - started)
            if executor.poisoned:
                return EXIT_POISONED
        stream.drain(PEER_TIMEOUT_S)  # the client closed: finish what it sent
    except (ConnectionLost, OSError) as exc:  # the client went away mid-transfer
        log.info("session connection lost", extra=logs.fields(reason=str(exc)))
    finally:
        peers.close()
        if channel.host_memory is not None:
            channel.host_memory.close()
    return 0


def _refuse(index: int, sock: socket.socket) -> None:
    sock.close()  # a relayed session has no stripes


def _timed(
    replies: Iterator[pb.Reply | DeviceData], watchdog: Watchdog, compiling: bool
) -> Iterator[pb.Reply | DeviceData]:
    """``replies``, with the work of producing each (not the sending) under the watchdog."""
    while True:
        watchdog.arm(compiling)
        try:
            reply = next(replies, None)
        finally:
            watchdog.disarm()
        if reply is None:
            return
        yield reply


def _first_contact(
    conn: Connection,
    handoffs: socket.socket,
    opened: tuple[Backend, Translate] | None,
) -> Channel | None:
    """The session's channel: relayed messages, or a connection handed over; None if neither."""
    # poll, not select: the front may hold over 1024 descriptors, and ours keep its numbers
    waiting = select.poll()
    for fd in (conn.fileno(), handoffs.fileno()):
        waiting.register(fd, select.POLLIN)
    ready = {fd for fd, _events in waiting.poll()}
    if handoffs.fileno() in ready:
        try:
            handover, sock = receive_handover(handoffs)
        except (ConnectionLost, OSError):
            return None
        if opened is None:  # no backend: the channel only carries the refusal
            return FrameChannel(sock, handover, _plain_buffer, lambda view: None)
        backend, translate = opened
        shared = None
        if handover.shared_memory:  # the client may share its pinned memory
            shared = SharedHostMemory(backend, translate, share_limit())
        return FrameChannel(sock, handover, backend.staging, backend.register_host, shared)
    try:
        first = conn.recv_bytes()
    except (EOFError, OSError):
        return None
    return RelayChannel(conn, first)


def _plain_buffer(size: int) -> memoryview:
    return memoryview(bytearray(size))


def main(argv: list[str]) -> int:
    spec_json, fd, handoff_fd = argv
    spec = WorkerSpec.from_json(spec_json)
    if not lifecycle.die_with(spec.front_pid):
        return EXIT_ORPHANED  # the front ended before this worker could tie itself to it
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the front process decides when workers end
    logs.configure(spec.log_level)
    handoffs = socket.socket(fileno=int(handoff_fd))
    return serve(Connection(int(fd)), handoffs, spec)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
