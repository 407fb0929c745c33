"""One session: a device of one daemon, reached over one ordered stream of requests.

The stream is a transport's :class:`~gpupool.transport.links.Link` (gRPC, TCP frames,
shared memory, UCX): what is queued, batched and waited for is the same on each.

Asynchronous calls (launches, frees, memsets, small async copies) are queued here and travel
together, in one ``Batch``, with the next synchronizing call, so a loop of launches costs one
round trip per synchronization rather than one per launch. A sticky CUDA error ends the
session as it ends a CUDA context: every later call raises the same error.
"""

from __future__ import annotations

import functools
import itertools
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Concatenate, NoReturn, ParamSpec, TypeVar

from gpupool.client import interrupts
from gpupool.errors import (
    ARRAY_ERRORS,
    ArrayFunctionError,
    CompileError,
    ConnectionLost,
    CUDARuntimeError,
    GpupoolError,
)
from gpupool.proto import batch
from gpupool.proto import gpupool_pb2 as pb
from gpupool.transport.links import Link

CLOSE_TIMEOUT_S = 2.0
MAX_QUEUED_CALLS = 4096  # flush the queue earlier than the next sync past these
MAX_QUEUED_BYTES = 8 << 20


@dataclass
class Stats:
    """What the client has sent, so that batching can be seen and tested."""

    calls: int = 0  # runtime calls made (each launch, copy, malloc, ...)
    messages: int = 0  # messages sent on session streams
    round_trips: int = 0  # calls that waited for a reply
    bytes_sent: int = 0  # payload of host-to-device copies (peer copies send none)
    bytes_received: int = 0  # payload of device-to-host copies
    mallocs: int = 0  # allocations that reached the daemon (the pools carve most from arenas)


STATS = Stats()
P = ParamSpec("P")
R = TypeVar("R")
_handles = itertools.count(1)  # streams, events, modules and functions: unique per process


def new_handle() -> int:
    """A fresh client-chosen handle (the daemon refuses one already in use)."""
    return next(_handles)


def raise_for(error: pb.Error) -> None:
    """Raise the exception an error reply stands for."""
    if error.name == "CompileError":
        raise CompileError(error.message, error.log)
    if error.name in ARRAY_ERRORS:  # an array function's own error: its Python type
        raise ArrayFunctionError(error.name, error.message).exception()
    raise CUDARuntimeError(error.name, error.message)


def _exchange(method: Callable[Concatenate[Session, P], R]) -> Callable[Concatenate[Session, P], R]:
    """A session method that talks to the daemon: Ctrl-C waits until it is done (see
    ``gpupool.client.interrupts``); a second one abandons the session."""

    @functools.wraps(method)
    def run(self: Session, *args: P.args, **kwargs: P.kwargs) -> R:
        with interrupts.held:
            try:
                return method(self, *args, **kwargs)
            except interrupts.Abandoned:
                self._abandon("a call on it was interrupted twice and cut short")
                raise

    return run


class Session:
    """A session on one device of one daemon.

    Every method that talks to the daemon runs as one exchange (``_exchange``): a Ctrl-C in
    it is raised once the exchange is complete, so the stream is never left mid-message.
    """

    def __init__(
        self,
        link: Link,
        device: int,
        token: str = "",
        label: str = "",
        watch: Callable[[Session], None] | None = None,
        before_wait: Callable[[Session], None] | None = None,
    ) -> None:
        """``label`` names the session's daemon and device in its errors; ``watch`` is
        given the session before it opens, so that a daemon that stops answering during the
        opening fails it too (``gpupool.client.liveness``); ``before_wait`` runs ahead of every
        call that waits (the context sends the other devices' queued work then, so that they
        run meanwhile)."""
        self._link = link
        self._before_wait = before_wait
        self.session_id = ""
        self.label = label or f"device {device}"
        self._queued: list[bytes] = []  # batch entries, serialized as they were queued
        self._queued_bytes = 0
        self._lock = threading.RLock()
        self._sticky: CUDARuntimeError | None = None
        self._broken: ConnectionLost | None = None  # abandoned: no further call is sent
        if watch is not None:
            watch(self)
        try:
            reply = self.call(pb.Request(open=pb.OpenSession(device=device, token=token)))
        except GpupoolError:
            link.close(0)
            raise
        opened = reply.opened
        self.session_id = opened.session_id
        self.key = opened.key  # names this session to a peer link
        self.properties = opened.properties
        try:
            link.opened(opened)
        except OSError as exc:
            link.close(0)
            raise ConnectionLost(f"session {self.session_id}: cannot attach: {exc}") from exc

    def submit(self, request: pb.Request) -> None:
        """Queue an asynchronous call; it travels with the next synchronizing one."""
        self.submit_entry(batch.entry(request.SerializeToString()))

    def submit_entry(self, entry: bytes) -> None:
        """Queue an asynchronous call already encoded as a batch entry (a launch, say:
        ``gpupool.client.launches``)."""
        with self._lock:
            self._check_alive()
            STATS.calls += 1
            self._queued.append(entry)
            self._queued_bytes += len(entry)
            if len(self._queued) >= MAX_QUEUED_CALLS or self._queued_bytes >= MAX_QUEUED_BYTES:
                self._flush_now()

    def flush(self) -> None:
        """Send what is queued now, without waiting: the device works on it meanwhile.

        A failure is not raised here (the program is busy with another device): the
        session's next call reports it, as CUDA reports an asynchronous error."""
        with self._lock:
            if self._queued and self._sticky is None:
                try:
                    self._flush_now()
                except GpupoolError:
                    pass

    @property
    def queued(self) -> bool:
        return bool(self._queued)

    @_exchange
    def _flush_now(self) -> None:
        self._flush()

    @_exchange
    def call(self, request: pb.Request) -> pb.Reply:
        """Send ``request`` with everything queued and return its reply (raising its error)."""
        if self._before_wait is not None:
            self._before_wait(self)
        with self._lock:
            request.wait = True
            self._send_with_queue(request)
            return self._final_reply()

    @_exchange
    def read(self, request: pb.Request, target: memoryview) -> None:
        """Send a device-to-host copy and write its data into ``target`` as it arrives (or
        have the worker write it there, where it can reach ``target`` itself)."""
        STATS.bytes_received += len(target)
        if self._before_wait is not None:
            self._before_wait(self)
        with self._lock:
            host = self._host_ref(target)
            if host is not None:  # the worker writes into the target itself
                request.memcpy_dtoh.host.CopyFrom(host)
                self.call(request)
                return
            request.wait = True
            self._send_with_queue(request)
            first = self._next_reply()
            try:
                received = self._link.receive_data(first, target)
            except ConnectionLost as exc:
                raise self._lost(str(exc)) from exc
            if received != len(target):
                raise CUDARuntimeError(
                    "cudaErrorUnknown",
                    f"daemon sent {received} bytes for a {len(target)}-byte copy",
                )

    @_exchange
    def write(self, header: pb.Request, data: memoryview, wait: bool) -> None:
        """Send a host-to-device copy: inline when small, by reference when the worker can
        reach the host memory itself (``Link.host_ref``), else its header then its payload."""
        STATS.bytes_sent += len(data)
        if wait and self._before_wait is not None:
            self._before_wait(self)
        with self._lock:
            size = header.memcpy_htod.size
            if size <= self._link.inline_limit:
                header.memcpy_htod.data = data.tobytes()
                if not wait:
                    self.submit(header)
                    return
                self.call(header)
                return
            host = self._host_ref(data)
            if host is not None:
                # The worker copies from the host memory itself, so the call waits for it:
                # memcpyAsync promises that the source may be reused once it returns.
                header.memcpy_htod.host.CopyFrom(host)
                self.call(header)
                return
            STATS.calls += 1
            header.wait = wait
            self._flush()
            STATS.messages += 1
            try:
                self._link.send_copy(header, data)
            except ConnectionLost as lost:
                self._raise_reason(lost)
            if wait:
                self._final_reply()

    @_exchange
    def close(self, timeout: float = CLOSE_TIMEOUT_S) -> None:
        """Send what is queued and end the session; the daemon frees its memory.

        Waits up to ``timeout`` seconds for the daemon to finish the queued calls and end the
        session, then drops the connection (which ends the worker at once).
        """
        with self._lock:
            if self._sticky is None and self._broken is None:
                try:
                    self._flush()
                except GpupoolError:
                    pass
            self._link.close(timeout)

    # internals

    def _check_alive(self) -> None:
        if self._sticky is not None:
            raise self._sticky
        if self._broken is not None:
            raise self._broken

    def _abandon(self, why: str) -> None:
        """Give the session up: its stream may be mid-message, so nothing more is sent."""
        if self._broken is None:
            self._broken = ConnectionLost(f"{self.label}: {why}")
            self._link.close(0)

    def fail(self, error: ConnectionLost) -> None:
        """End the session from any thread (its daemon or worker stopped answering): a call
        blocked on it, and every later one, raises ``error``."""
        if self._broken is None and self._sticky is None:
            self._broken = error
            self._link.abort()

    def _host_ref(self, view: memoryview) -> pb.HostRef | None:
        """The link's reference to host memory its worker can reach (shared pinned memory)."""
        self._check_alive()
        try:
            return self._link.host_ref(view)
        except ConnectionLost as exc:
            raise self._lost(str(exc)) from exc

    def _send_with_queue(self, request: pb.Request) -> None:
        self._check_alive()
        STATS.calls += 1
        STATS.round_trips += 1
        if not self._queued:
            self._send(request)
            return
        self._queued.append(batch.entry(request.SerializeToString()))
        self._flush()

    def _flush(self) -> None:
        if self._queued:
            message = batch.batch(self._queued)
            self._queued = []
            self._queued_bytes = 0
            self._send(message)

    def _send(self, message: pb.Request | bytes) -> None:
        """Send one message: a request, or a serialized batch."""
        STATS.messages += 1
        try:
            if isinstance(message, bytes):
                self._link.send_message(message)
            else:
                self._link.send(message)
        except ConnectionLost as lost:
            self._raise_reason(lost)

    def _raise_reason(self, lost: ConnectionLost) -> NoReturn:
        """Sending failed: raise the daemon's reason where it gave one (a lease ended, say),
        else why sending failed (a connection reset, a host buffer that cannot be read)
        rather than only that the session then ended."""
        try:
            self._next_reply()
        except ConnectionLost:
            pass
        raise self._lost(str(lost)) from lost

    def _final_reply(self) -> pb.Reply:
        while True:
            reply = self._next_reply()
            if not reply.more:
                return reply

    def _next_reply(self) -> pb.Reply:
        try:
            reply = self._link.receive()
        except ConnectionLost as exc:
            raise self._lost(str(exc)) from exc
        if reply.HasField("error"):
            try:
                raise_for(reply.error)
            except CUDARuntimeError as exc:
                if exc.sticky:
                    self._sticky = exc
                raise
        return reply

    def _lost(self, why: str) -> GpupoolError:
        if self._sticky is not None:
            return self._sticky
        if self._broken is not None:
            return self._broken
        return ConnectionLost(f"{self.label} (session {self.session_id or '?'}): {why}")
