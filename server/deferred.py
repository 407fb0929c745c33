"""Stream work behind a peer transfer runs in a thread, so the worker keeps answering.

A peer copy or a collective waits for other workers, which wait for their own clients' calls.
CUDA runs such work asynchronously on a stream: a ``cudaMalloc`` made meanwhile returns at
once. So does this worker. Once a peer call arrives, it and every stream-ordered call after
it go, in order, to one thread (the stream), while calls that touch no device memory
(``IMMEDIATE``: malloc, queries, creating handles, loading modules, opening links) are still
carried out and answered at once; a waiting stream call is answered by the thread when it
gets there. When the thread has caught up, calls run directly again, at no extra cost.

A host-to-device copy whose payload follows its request, and a device-to-host copy whose
data goes back on the connection, wait for the thread first and run on the worker's loop (the
connection is read there); the executor releases its lock while a transfer waits for
a peer, so the immediate calls are not held up by it.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator

from gpupool.logs import fields
from gpupool.proto import gpupool_pb2 as pb
from gpupool.server.executor import DeviceData, SessionExecutor
from gpupool.server.peers import PEER_TIMEOUT_S

log = logging.getLogger(__name__)

PEER_CALLS = frozenset({"peer_send", "peer_recv", "collective"})
IMMEDIATE = frozenset(
    {
        "malloc",
        "mem_get_info",
        "stream_create",
        "event_create",
        "module_load",
        "get_function",
        "peer_connect",
    }
)
Send = Callable[[pb.Reply | DeviceData], None]


def reads_back(call: pb.Request) -> bool:
    """A device-to-host copy whose data travels back on the session's own connection: over
    shm:// its ring's slots are answered on the socket this loop reads, so it runs here,
    once the stream thread has caught up."""
    return call.WhichOneof("call") == "memcpy_dtoh" and not call.memcpy_dtoh.HasField("host")


def has_peer_call(request: pb.Request) -> bool:
    call = request.WhichOneof("call")
    if call == "batch":
        return any(inner.WhichOneof("call") in PEER_CALLS for inner in request.batch.requests)
    return call in PEER_CALLS


class StreamThread:
    """The worker's stream while peer work is pending: a FIFO of requests and one thread."""

    def __init__(self, executor: SessionExecutor, send: Send) -> None:
        self._executor = executor
        self._send = send
        self._queue: queue.Queue[pb.Request] = queue.Queue()
        self._idle = threading.Condition()
        self._pending = 0
        threading.Thread(target=self._run, name="stream", daemon=True).start()

    @property
    def busy(self) -> bool:
        return self._pending > 0

    def dispatch(self, request: pb.Request) -> Iterator[pb.Reply | DeviceData]:
        """Carry ``request`` out, or queue it behind the pending peer work; the replies of
        what runs now (as they are made: the caller's watchdog times each)."""
        if not self.busy and not has_peer_call(request):
            yield from self._executor.handle(request)
            return
        calls = self._executor.batch_calls(request)
        if calls is None:  # a malformed batch: refused whole, in order
            self._put(request)
            return
        for call in calls:  # an immediate call needs nothing queued before it
            if call.WhichOneof("call") in IMMEDIATE:
                yield from self._executor.handle(call)
            elif reads_back(call):  # its data may flow through the ring, answered on our socket
                self.drain(PEER_TIMEOUT_S)
                yield from self._executor.handle(call)
            else:
                self._put(call)

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until the thread has caught up; False if it has not within ``timeout``."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    def _put(self, request: pb.Request) -> None:
        with self._idle:
            self._pending += 1
        self._queue.put(request)

    def _run(self) -> None:
        while True:
            request = self._queue.get()
            try:
                for reply in self._executor.handle(request):
                    self._send(reply)
            except Exception as exc:  # the connection went: the main loop ends the session
                log.info("stream thread stopped", extra=fields(reason=repr(exc)))
            finally:
                with self._idle:
                    self._pending -= 1
                    self._idle.notify_all()
