"""The calls of one session, checked and carried out on a backend, in order.

Runs inside the session's worker process. Asynchronous calls (no ``wait``) get no reply: the
first error among them is held and reported by the next waiting call instead of running it,
as a CUDA call that returns an earlier asynchronous error does nothing. A sticky error (an
illegal address, say) poisons the CUDA context, so the executor reports it at once, even for
an asynchronous call, and marks itself poisoned: the worker then ends, and with it the
context.

Every waiting request gets exactly one final reply, whatever goes wrong: the client is
blocked on it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import logging
import os
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from gpupool import grants
from gpupool.errors import ArrayFunctionError, CompileError, CUDARuntimeError, GpupoolError
from gpupool.logs import fields
from gpupool.proto import gpupool_pb2 as pb
from gpupool.proto.limits import CHUNK_SIZE
from gpupool.server.allocations import AllocationTable, MemoryQuota
from gpupool.server.arrays import ArrayFunctions, quietly
from gpupool.server.backends import translated
from gpupool.server.backends.base import Backend
from gpupool.server.collectives import RingCollective
from gpupool.server.counters import Cell, SlotCounters
from gpupool.server.host_memory import SharedHostMemory
from gpupool.server.includes import check_includes
from gpupool.server.launches import PreparedLaunches
from gpupool.server.ledger import QuotaAccount
from gpupool.server.peers import Peers
from gpupool.transport.payload import DiscardSink, Sink, Source, pieces

if TYPE_CHECKING:
    from gpupool.server.torch_ops import TorchOps

log = logging.getLogger(__name__)

T = TypeVar("T")
_NOT_IN_A_BATCH = ("batch", "chunk", "open")
MAX_OPEN_REGIONS = 256  # other workers' allocations a session keeps open, and their bytes
MAX_OPEN_BYTES = 1 << 30


def error_message(exc: GpupoolError) -> pb.Error:
    """The wire form of an error."""
    if isinstance(exc, CUDARuntimeError):
        return pb.Error(name=exc.name, message=exc.detail)
    if isinstance(exc, CompileError):
        return pb.Error(name="CompileError", message=exc.message, log=exc.log)
    if isinstance(exc, ArrayFunctionError):
        return pb.Error(name=exc.name, message=exc.message)
    return pb.Error(name="cudaErrorUnknown", message=str(exc))


class _Handles:
    """Client-chosen handles of one kind (streams, events, modules, functions)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._objects: dict[int, object] = {}

    def add(self, handle: int, obj: object) -> None:
        if handle == 0 or handle in self._objects:
            raise _invalid_handle(self.kind, handle, "is zero or already in use")
        self._objects[handle] = obj

    def get(self, handle: int) -> object:
        try:
            return self._objects[handle]
        except KeyError:
            raise _invalid_handle(self.kind, handle, "does not exist") from None

    def pop(self, handle: int) -> object:
        obj = self.get(handle)
        del self._objects[handle]
        return obj


class _Streams(_Handles):
    """Streams, where handle 0 is the null stream (which cannot be destroyed)."""

    def get(self, handle: int) -> object:
        return None if handle == 0 else super().get(handle)

    def pop(self, handle: int) -> object:
        if handle == 0:
            raise _invalid_handle(self.kind, handle, "is the null stream")
        return super().pop(handle)


def _invalid_handle(kind: str, handle: int, why: str) -> CUDARuntimeError:
    return CUDARuntimeError("cudaErrorInvalidResourceHandle", f"{kind} handle {handle} {why}")


class _PendingCopy:
    """A host-to-device copy whose payload is still arriving (in chunks, or beside the header).

    A copy that failed is still followed by its payload: it is consumed and dropped, and the
    error is reported once the last byte has arrived.
    """

    def __init__(
        self, dst: int, size: int, stream: object, wait: bool, error: pb.Error | None = None
    ) -> None:
        self.dst = dst
        self.size = size
        self.received = 0
        self.stream = stream
        self.wait = wait
        self.error = error
        self.fatal: CUDARuntimeError | None = None  # a sticky error: raised once it is all read


class _DeviceSink:
    """Writes a pending copy's payload to the device, remembering the first error."""

    def __init__(self, executor: SessionExecutor, copy: _PendingCopy) -> None:
        self._executor = executor
        self._copy = copy

    def target(self, offset: int, size: int) -> memoryview | None:
        if self._copy.error is not None:
            return None
        return self._executor.backend.host_view(self._copy.dst + offset, size)

    def write(self, offset: int, data: memoryview) -> None:
        copy = self._copy
        if copy.error is not None:
            return
        backend = self._executor.backend
        try:
            self._executor._guarded(lambda: backend.write(copy.dst + offset, data, copy.stream))
        except CUDARuntimeError as exc:
            copy.error = error_message(exc)
            if exc.sticky:
                copy.fatal = exc


class _PeerSink:
    """Device memory at ``ptr`` as the sink of a peer transfer."""

    def __init__(self, executor: SessionExecutor, ptr: int, stream: object) -> None:
        self._executor = executor
        self._ptr = ptr
        self._stream = stream

    def target(self, offset: int, size: int) -> memoryview | None:
        return self._executor.backend.host_view(self._ptr + offset, size)

    def write(self, offset: int, data: memoryview) -> None:
        backend, ptr = self._executor.backend, self._ptr + offset
        self._executor._guarded(lambda: backend.write(ptr, data, self._stream))


class _DeviceSource:
    """A device range as a payload source (the daemon's side of a device-to-host copy)."""

    def __init__(self, executor: SessionExecutor, ptr: int, stream: object) -> None:
        self._executor = executor
        self._ptr = ptr
        self._stream = stream

    def direct(self, offset: int, size: int) -> memoryview | None:
        return self._executor.backend.host_view(self._ptr + offset, size)

    def copy_into(self, offset: int, target: memoryview) -> None:
        backend, ptr = self._executor.backend, self._ptr + offset
        self._executor._guarded(lambda: backend.read_into(ptr, target, self._stream))


class DeviceData:
    """The data of a device-to-host reply, read from the device as the transport sends it.
    (A plain class: one is made for every synchronizing copy, a dataclass costs more.)"""

    __slots__ = ("size", "source")

    def __init__(self, size: int, source: Source) -> None:
        self.size = size
        self.source = source

    def small_reply(self) -> pb.Reply:
        """The whole data in one reply (it is at most a chunk)."""
        view = self.source.direct(0, self.size)
        if view is None:
            view = memoryview(bytearray(self.size))
            self.source.copy_into(0, view)
        return pb.Reply(data=bytes(view))


def as_replies(item: pb.Reply | DeviceData) -> Iterator[pb.Reply]:
    """Replies for a message transport: device data as replies of at most CHUNK_SIZE bytes."""
    if isinstance(item, pb.Reply):
        yield item
        return
    for start, length in pieces(item.size, CHUNK_SIZE):
        view = item.source.direct(start, length)
        if view is None:
            view = memoryview(bytearray(length))
            item.source.copy_into(start, view)
        yield pb.Reply(data=bytes(view), more=start + length < item.size)
    if not item.size:
        yield pb.Reply(data=b"")


class SessionExecutor:
    """Carries out the requests of one session on one backend."""

    def __init__(
        self,
        backend: Backend,
        translate: Callable[[Exception], Exception],
        host_memory: SharedHostMemory | None = None,
        account: QuotaAccount | None = None,
        pooled: bool = False,
        counters: SlotCounters | None = None,
        peers: Peers | None = None,
    ) -> None:
        """``translate`` turns a backend library's own exception types into gpupool's;
        ``host_memory`` is what the client shared (shm:// sessions), which copies may name;
        ``account`` is this worker's row of the device's quota ledger, shared with the other
        sessions of its allocation; ``pooled``: the daemon is in a pool, so every session
        has a quota; ``counters`` is the worker's row of the device's counters
        (``/metrics``); ``peers`` are the session's links to other workers (none: peer calls
        are refused)."""
        self.backend = backend
        self._account = account
        self._pooled = pooled
        self._counts = counters or SlotCounters.detached()
        self._host_memory = host_memory
        self._peers = peers
        self.poisoned = False
        self._device = backend.properties()
        self._translate = translate
        self._allocations = AllocationTable()
        self._quota = MemoryQuota()
        self._arrays = ArrayFunctions(backend, self._allocations)
        self._torch: TorchOps | None = None  # made (and torch imported) by the first torch op
        self._streams = _Streams("stream")
        self._events = _Handles("event")
        self._modules = _Handles("module")
        self._functions = _Handles("function")
        self._functions_of: dict[int, list[int]] = {}  # module handle -> its functions' handles
        self._launches = PreparedLaunches(
            backend, self._device, self._functions.get, self._streams.get
        )
        self._held: pb.Error | None = None
        self._copy: _PendingCopy | None = None
        self._opened = False
        # held by every call; released while a peer transfer waits (server/deferred.py)
        self._lock = threading.RLock()
        self._exports: dict[int, tuple[int, int, int, bytes, int | None]] = {}  # by base
        self._regions = itertools.count(1)
        # (link, region) -> (address, size), oldest first
        self._opened_regions: dict[tuple[int, int], tuple[int, int]] = {}

    def handle(self, request: pb.Request) -> Iterator[pb.Reply | DeviceData]:
        """The replies to ``request``: none unless it waits or poisons the context."""
        with self._lock:
            yield from self._quiet(request)

    def batch_calls(self, request: pb.Request) -> list[pb.Request] | None:
        """A request as the calls it holds, to be handled one by one (itself, if not a
        batch); None for a batch that is refused whole."""
        if not request.HasField("batch"):
            return [request]
        inner = request.batch.requests
        calls = [each.WhichOneof("call") for each in inner]
        waiting = [index for index, each in enumerate(inner) if each.wait]
        if any(call in _NOT_IN_A_BATCH for call in calls) or (
            waiting and (request.wait or waiting != [len(inner) - 1])
        ):
            return None
        if request.wait:  # the batch's own reply: its last call's
            if not inner:
                return [pb.Request(wait=True, device_synchronize=pb.DeviceSynchronize())]
            inner[-1].wait = True
        return list(inner)

    @contextlib.contextmanager
    def _unlocked(self) -> Iterator[None]:
        """Let other calls in while a peer transfer waits for the other worker."""
        self._lock.release()
        try:
            yield
        finally:
            self._lock.acquire()

    def _quiet(self, request: pb.Request) -> Iterator[pb.Reply | DeviceData]:
        if request.HasField("array_op") or request.HasField("batch"):
            # Once a message, and only where array functions may run: silencing warnings
            # costs more than a launch or a small copy, and a batch holds thousands.
            with quietly():
                yield from self._handle(request)
        else:
            yield from self._handle(request)

    def _handle(self, request: pb.Request) -> Iterator[pb.Reply | DeviceData]:
        wait = request.wait
        if request.HasField("chunk") and self._copy is not None:
            wait = self._copy.wait  # the copy's header asked for the reply
        try:
            yield from self._execute(request, wait)
        except Exception as exc:
            if request.HasField("batch"):  # refused whole: a reply if any of its calls waits
                wait = wait or any(inner.wait for inner in request.batch.requests)
            yield from self._failed(wait, self._as_error(exc, request.WhichOneof("call")))

    def handle_payload(
        self, request: pb.Request, size: int, receive: Callable[[Sink], None]
    ) -> Iterator[pb.Reply | DeviceData]:
        """A host-to-device copy whose ``size`` payload bytes travel beside the request.

        ``receive`` moves the payload into the sink it is given; it is called exactly once,
        whatever the request, so the payload is always read off the wire.
        """
        copy = request.memcpy_htod
        if (
            not request.HasField("memcpy_htod")
            or copy.data
            or copy.HasField("host")
            or copy.size != size
        ):
            receive(DiscardSink())
            problem = f"a {size}-byte payload beside a request that is not a copy of that size"
            yield from self._failed(
                request.wait, CUDARuntimeError("cudaErrorInvalidValue", problem)
            )
            return
        yield from self.handle(request)  # checks the copy and makes it pending
        pending = self._copy
        if pending is None:  # reported already (a sticky error); the payload is not wanted
            receive(DiscardSink())
            return
        receive(_DeviceSink(self, pending))
        pending.received = pending.size
        try:
            yield from self._finish(pending)
        except GpupoolError as exc:
            yield from self._failed(pending.wait, exc)

    def _execute(self, request: pb.Request, wait: bool) -> Iterator[pb.Reply | DeviceData]:
        call = request.WhichOneof("call")
        if self._copy is not None and call != "chunk":
            self._copy = None
            raise CUDARuntimeError(
                "cudaErrorInvalidValue", f"expected the rest of a host-to-device copy, got {call}"
            )
        if call is None:
            raise CUDARuntimeError("cudaErrorInvalidValue", "request names no call")
        if call == "batch":
            yield from self._batch(request)
        elif call == "chunk":
            yield from self._chunk(request.chunk)
        elif wait and self._held is not None:
            yield from self._report_held(request)
        elif call == "memcpy_htod":
            if self._guarded(lambda: self._memcpy_htod(request.memcpy_htod, wait)) and wait:
                yield pb.Reply()
        elif call == "memcpy_dtoh" and request.memcpy_dtoh.HasField("host"):
            self._guarded(lambda: self._read_to_host(request.memcpy_dtoh))
            if wait:
                yield pb.Reply()
        elif call == "memcpy_dtoh":
            data = self._read(request.memcpy_dtoh)
            if wait:  # nobody reads the data of a copy that does not wait
                yield data
        else:
            method = _CALLS.get(call)
            if method is None:  # a call of the protocol that no open session serves
                raise CUDARuntimeError(
                    "cudaErrorNotSupported", f"'{call}' is not a call of an open session"
                )
            message = getattr(request, call)  # ``call`` is a field of the oneof, not a name
            reply = self._guarded(lambda: method(self, message))
            if wait:
                yield reply or pb.Reply()

    def _batch(self, request: pb.Request) -> Iterator[pb.Reply | DeviceData]:
        """Run a batch's calls in order, after checking that its replies add up to one."""
        inner = request.batch.requests
        waiting = [index for index, each in enumerate(inner) if each.wait]
        calls = [each.WhichOneof("call") for each in inner]
        if any(call in _NOT_IN_A_BATCH for call in calls):
            raise CUDARuntimeError("cudaErrorInvalidValue", "a batch cannot hold batch/chunk/open")
        if waiting and (request.wait or waiting != [len(inner) - 1]):
            raise CUDARuntimeError(
                "cudaErrorInvalidValue", "only the last call of a batch may wait, and the batch not"
            )
        # The calls a batch holds thousands of: straight to the prepared launch or the array
        # function, without the generators and lookups of the path every other call takes.
        launch, array_op = self._launches.launch, self._do_array_op
        fast: dict[str, Callable[[pb.Request], None]] = {
            "launch": lambda each: launch(each.launch),
            "array_op": lambda each: array_op(each.array_op),
        }
        launched = 0  # counted once a batch: a count per launch costs a few percent of one
        try:
            for each, call in zip(inner, calls, strict=True):
                run = fast.get(call or "") if not each.wait and self._copy is None else None
                if run is not None:
                    try:
                        self._guarded(functools.partial(run, each))
                        launched += call == "launch"
                    except Exception as exc:
                        yield from self._failed(False, self._as_error(exc, call))
                else:
                    yield from self._handle(each)
                if self.poisoned:
                    return
        finally:
            self._counts.launched(launched)
        if request.wait:
            yield self._held_reply() or pb.Reply()

    def _report_held(self, request: pb.Request) -> Iterator[pb.Reply]:
        """Answer a waiting call with the held error, without running it."""
        held = self._held_reply()
        assert held is not None
        copy = request.memcpy_htod
        if (
            request.HasField("memcpy_htod")
            and len(copy.data) != copy.size
            and not copy.HasField("host")
        ):  # its chunks follow: swallow them, then reply
            self._copy = _PendingCopy(copy.dst, copy.size, None, True, held.error)
            return
        yield held

    def _held_reply(self) -> pb.Reply | None:
        if self._held is None:
            return None
        held, self._held = self._held, None
        return pb.Reply(error=held)

    def _guarded(self, action: Callable[[], T]) -> T:
        """Run a backend action, with backend library errors turned into gpupool's."""
        return translated(self._translate, action)

    @staticmethod
    def _as_error(exc: Exception, call: str | None) -> GpupoolError:
        """The error to report for ``exc``: itself, or, for a daemon bug, cudaErrorUnknown
        (logged; the session is told and goes on)."""
        if isinstance(exc, GpupoolError):
            return exc
        log.exception("unexpected failure", extra=fields(call=call))
        return CUDARuntimeError("cudaErrorUnknown", f"{type(exc).__name__}: {exc}")

    def _failed(self, wait: bool, exc: GpupoolError) -> Iterator[pb.Reply]:
        error = error_message(exc)
        sticky = isinstance(exc, CUDARuntimeError) and exc.sticky
        log.info("call failed", extra=fields(error=error.name, detail=error.message, wait=wait))
        if sticky:
            self.poisoned = True
            yield pb.Reply(error=error)
        elif wait:
            yield self._held_reply() or pb.Reply(error=error)
        elif self._held is None:
            self._held = error

    # Copies: a host-to-device copy may continue in chunks.

    def _memcpy_htod(self, call: pb.MemcpyHtoD, wait: bool) -> bool:
        """Start (or, when inline or from shared host memory, do) a copy; True when done."""
        if call.HasField("host"):
            if call.data:
                raise CUDARuntimeError("cudaErrorInvalidValue", "a copy both inline and shared")
            self._allocations.check(call.dst, call.size, "host-to-device copy")
            source = self._shared(call.host, call.size)
            self.backend.write(call.dst, source, self._streams.get(call.stream))
            self._counts.copied(Cell.HTOD_BYTES, call.size)
            return True
        inline = len(call.data) == call.size
        try:
            if call.data and not inline:
                raise CUDARuntimeError(
                    "cudaErrorInvalidValue",
                    f"copy of {call.size} bytes carries {len(call.data)} bytes inline",
                )
            self._allocations.check(call.dst, call.size, "host-to-device copy")
            stream = self._streams.get(call.stream)
        except GpupoolError as exc:
            if inline or call.data:
                raise
            self._copy = _PendingCopy(call.dst, call.size, None, wait, error_message(exc))
            return False
        if inline:
            self.backend.write(call.dst, memoryview(call.data), stream)
            self._counts.copied(Cell.HTOD_BYTES, call.size)
            return True
        self._copy = _PendingCopy(call.dst, call.size, stream, wait)
        return False

    def _chunk(self, call: pb.Chunk) -> Iterator[pb.Reply]:
        copy = self._copy
        if copy is None:
            raise CUDARuntimeError("cudaErrorInvalidValue", "data chunk outside a copy")
        size = len(call.data)
        if size > copy.size - copy.received:
            self._copy = None
            raise CUDARuntimeError("cudaErrorInvalidValue", "more data than the copy announced")
        _DeviceSink(self, copy).write(copy.received, memoryview(call.data))
        copy.received += size
        if copy.received == copy.size:
            yield from self._finish(copy)

    def _finish(self, copy: _PendingCopy) -> Iterator[pb.Reply]:
        """A copy's payload has all arrived: its reply, or its error held."""
        self._copy = None
        if copy.fatal is not None:
            raise copy.fatal
        if copy.error is None:
            self._counts.copied(Cell.HTOD_BYTES, copy.size)
            if copy.wait:
                yield pb.Reply()
        elif copy.wait:
            yield pb.Reply(error=copy.error)
        elif self._held is None:
            self._held = copy.error

    def _read_to_host(self, call: pb.MemcpyDtoH) -> None:
        """A device-to-host copy into host memory the client shared: no data in the reply."""
        self._allocations.check(call.src, call.size, "device-to-host copy")
        target = self._shared(call.host, call.size)
        self.backend.read_into(call.src, target, self._streams.get(call.stream))
        self._counts.copied(Cell.DTOH_BYTES, call.size)

    def _shared(self, ref: pb.HostRef, size: int) -> memoryview:
        if self._host_memory is None:
            raise CUDARuntimeError(
                "cudaErrorInvalidValue", "host memory is shared only over shm:// sessions"
            )
        return self._host_memory.view(ref, size)

    def _read(self, call: pb.MemcpyDtoH) -> DeviceData:
        self._allocations.check(call.src, call.size, "device-to-host copy")
        source = _DeviceSource(self, call.src, self._streams.get(call.stream))
        self._counts.copied(Cell.DTOH_BYTES, call.size)  # read as it is sent
        return DeviceData(call.size, source)

    # The other calls: each checks its arguments and returns its reply, if it has a result.

    def _do_open(self, call: pb.OpenSession) -> pb.Reply:
        if self._opened:
            raise CUDARuntimeError("cudaErrorInvalidValue", "the session is already open")
        limited = call.limits.HasField("memory")
        if self._pooled and not limited:  # the front always sets a pooled session's quota
            raise CUDARuntimeError(
                grants.REFUSED, "a pooled daemon opens no session without a quota"
            )
        self._opened = True
        # The front put the grant's quota here (0 is a quota of nothing, never "no limit");
        # the session's CUDA context is in it, and so are its allocation's other sessions.
        limit = min(call.limits.memory, self._device.total_memory) if limited else None
        self._quota = MemoryQuota(limit, self.backend.context_memory(), self._account)
        total = self._quota.total(self._device.total_memory)
        self._device = dataclasses.replace(self._device, total_memory=total)
        self._cap_backend_memory()
        return pb.Reply(opened=pb.SessionOpened(properties=self._device.to_message()))

    def _do_mem_get_info(self, call: pb.MemGetInfo) -> pb.Reply:
        free, total = self.backend.mem_info()
        free, total = self._quota.report(free, total, self.backend.own_memory())
        return pb.Reply(mem_info=pb.MemInfo(free=free, total=total))

    def _do_malloc(self, call: pb.Malloc) -> pb.Reply:
        if call.size == 0:
            return pb.Reply(ptr=0)
        total = self._device.total_memory
        if call.size > total:
            raise CUDARuntimeError(
                "cudaErrorMemoryAllocation",
                f"cannot allocate {call.size} bytes on a device of {total} bytes",
            )
        self._quota.reserve(call.size, self.backend.own_memory())
        try:
            ptr = self.backend.malloc(call.size)
        except BaseException:
            self._quota.release(call.size)
            raise
        self._allocations.add(ptr, call.size)
        self._cap_backend_memory()
        return pb.Reply(ptr=ptr)

    def _do_free(self, call: pb.Free) -> None:
        if call.ptr == 0:
            return
        size = self._allocations.remove(call.ptr)
        self._arrays.freed(call.ptr)
        self._exports.pop(call.ptr, None)
        self.backend.free(call.ptr)
        self._quota.release(size, self.backend.own_memory())
        self._cap_backend_memory()

    def _cap_backend_memory(self) -> None:
        """Keep the backend's own allocations within what the quota leaves."""
        room = self._quota.room()
        if room is not None:
            self.backend.limit_own_memory(room)

    def _do_memcpy_dtod(self, call: pb.MemcpyDtoD) -> None:
        self._allocations.check(call.src, call.size, "device-to-device copy source")
        self._allocations.check(call.dst, call.size, "device-to-device copy destination")
        self.backend.copy(call.dst, call.src, call.size, self._streams.get(call.stream))
        self._counts.copied(Cell.DTOD_BYTES, call.size)

    def _do_memset(self, call: pb.Memset) -> None:
        if call.value > 0xFF:
            raise CUDARuntimeError("cudaErrorInvalidValue", f"memset value {call.value} > 255")
        self._allocations.check(call.ptr, call.size, "memset")
        self.backend.memset(call.ptr, call.value, call.size, self._streams.get(call.stream))

    def _do_module_load(self, call: pb.ModuleLoad) -> None:
        kind = call.WhichOneof("image")
        if kind is None:
            raise CUDARuntimeError("cudaErrorInvalidValue", "module load carries no image")
        if kind == "cuda_source":
            check_includes(call.cuda_source, call.options)
        module = self.backend.load_module(kind, getattr(call, kind), list(call.options))
        self._modules.add(call.module, module)

    def _do_module_unload(self, call: pb.ModuleUnload) -> None:
        """As cuModuleUnload: the module's functions go with it."""
        self._modules.pop(call.module)
        for function in self._functions_of.pop(call.module, []):
            self._functions.pop(function)
        self._launches.forget()

    def _do_get_function(self, call: pb.GetFunction) -> None:
        function = self.backend.get_function(self._modules.get(call.module), call.name)
        self._functions.add(call.function, function)
        self._functions_of.setdefault(call.module, []).append(call.function)

    def _do_launch(self, call: pb.Launch) -> None:
        self._launches.launch(call)
        self._counts.launched()

    def _do_stream_create(self, call: pb.StreamCreate) -> None:
        self._streams.add(call.stream, self.backend.create_stream())

    def _do_stream_destroy(self, call: pb.StreamDestroy) -> None:
        self.backend.destroy_stream(self._streams.pop(call.stream))
        self._launches.forget()

    def _do_stream_synchronize(self, call: pb.StreamSynchronize) -> None:
        self.backend.synchronize_stream(self._streams.get(call.stream))

    def _do_stream_wait_event(self, call: pb.StreamWaitEvent) -> None:
        stream = self._streams.get(call.stream)
        self.backend.stream_wait_event(stream, self._events.get(call.event))

    def _do_event_create(self, call: pb.EventCreate) -> None:
        self._events.add(call.event, self.backend.create_event(call.disable_timing))

    def _do_event_destroy(self, call: pb.EventDestroy) -> None:
        self._events.pop(call.event)

    def _do_event_record(self, call: pb.EventRecord) -> None:
        event = self._events.get(call.event)
        self.backend.record_event(event, self._streams.get(call.stream))

    def _do_event_query(self, call: pb.EventQuery) -> pb.Reply:
        return pb.Reply(ready=self.backend.query_event(self._events.get(call.event)))

    def _do_event_synchronize(self, call: pb.EventSynchronize) -> None:
        self.backend.synchronize_event(self._events.get(call.event))

    def _do_event_elapsed_time(self, call: pb.EventElapsedTime) -> pb.Reply:
        start, end = self._events.get(call.start), self._events.get(call.end)
        return pb.Reply(elapsed_ms=self.backend.elapsed_ms(start, end))

    def _do_device_synchronize(self, call: pb.DeviceSynchronize) -> None:
        self.backend.synchronize()

    def _do_array_op(self, call: pb.ArrayOp) -> None:
        self._arrays.run(call, self._streams.get(call.stream))
        self._counts.array_op()

    def _do_torch_op(self, call: pb.TorchOp) -> None:
        if self._torch is None:
            from gpupool.server.torch_ops import TorchOps  # torch is loaded only for torch

            self._torch = TorchOps(self.backend, self._allocations)
        self._torch.run(call, self._streams.get(call.stream))
        self._counts.array_op()  # a tensor operation is an array operation on the device

    # Peer links: copies and collectives straight between workers (server/peers.py).

    def _peer_links(self) -> Peers:
        if self._peers is None:
            raise CUDARuntimeError(
                "cudaErrorPeerAccessUnsupported", "this session's worker has no peer links"
            )
        return self._peers

    def _do_peer_connect(self, call: pb.PeerConnect) -> None:
        self._peer_links().connect(call)

    def _do_peer_send(self, call: pb.PeerSend) -> None:
        """Send a device range on a link; a refusal still goes to the receiver (as an error
        in place of the data), so that it does not wait for bytes that never come."""
        link = self._peer_links().outbound(call.link)
        try:
            self._allocations.check(call.src, call.size, "peer copy source")
            stream = self._streams.get(call.stream)
        except CUDARuntimeError as exc:
            link.send_error(error_message(exc))
            raise
        exported = self._exported(call.src) if link.local else None
        with self._unlocked():
            if exported is None:
                link.send(call.size, _DeviceSource(self, call.src, stream))
            else:
                region, base, size, handle, fd = exported
                link.send_region(region, call.src - base, call.size, size, handle, fd)
        self._counts.peer_copied("sent", call.size)

    def _exported(self, ptr: int) -> tuple[int, int, int, bytes, int | None] | None:
        """The allocation ``ptr`` is in as a region a worker of this daemon can open: (id,
        base, size, handle, descriptor); None where the backend cannot share it."""
        found = self._allocations.find(ptr)
        if found is None:
            return None
        base, size = found
        known = self._exports.get(base)
        if known is None:
            export = self.backend.export_memory(base, size)
            if export is None:
                return None
            known = self._exports[base] = (next(self._regions), base, size, *export)
        return known

    def _open_region(
        self, link: int, header: pb.PeerData, fd: int | None, dst: int, stream: object
    ) -> pb.Error | None:
        """Copy a transfer from another worker's memory, opened here once per region."""
        if header.offset + header.size > header.region_size:
            if fd is not None:
                os.close(fd)
            return pb.Error(name="cudaErrorInvalidValue", message="peer copy past its region")
        key = (link, header.region)
        opened = self._opened_regions.pop(key, None)  # and back in, as the newest
        if opened is None:
            self._close_regions(MAX_OPEN_REGIONS - 1, MAX_OPEN_BYTES - header.region_size)
            address = self.backend.open_peer_memory(header.ipc, fd, header.region_size)
            opened = (address, header.region_size)
        elif fd is not None:
            os.close(fd)
        self._opened_regions[key] = opened
        base = opened[0]
        self._guarded(lambda: self.backend.copy(dst, base + header.offset, header.size, stream))
        return None

    def _close_regions(self, count: int, size: int) -> None:
        """Close the oldest opened regions until at most ``count`` of at most ``size`` bytes
        stay open: a region the sender has freed is kept alive by its mapping here."""
        held = sum(each for _base, each in self._opened_regions.values())
        while self._opened_regions and (len(self._opened_regions) > count or held > size):
            base, each = self._opened_regions.pop(next(iter(self._opened_regions)))
            self.backend.close_peer_memory(base)
            held -= each

    def _do_peer_recv(self, call: pb.PeerRecv) -> None:
        with self._unlocked():
            link = self._peer_links().inbound.get(call.link)
        refused: CUDARuntimeError | None = None
        try:
            self._allocations.check(call.dst, call.size, "peer copy destination")
            stream = self._streams.get(call.stream)
        except CUDARuntimeError as exc:
            refused, stream = exc, None
        sink: Sink = DiscardSink() if refused else _PeerSink(self, call.dst, stream)

        def local(header: pb.PeerData, fd: int | None) -> pb.Error | None:
            if refused is not None or header.size != call.size:
                if fd is not None:
                    os.close(fd)
                return None if refused else pb.Error(name="cudaErrorInvalidValue")
            return self._open_region(call.link, header, fd, call.dst, stream)

        with self._unlocked():
            error = link.receive(call.size, sink, DiscardSink(), local)
        if refused is not None:
            raise refused
        if error is not None:
            raise CUDARuntimeError(error.name, f"peer copy: {error.message}")
        self._counts.peer_copied("received", call.size)

    def _do_collective(self, call: pb.Collective) -> None:
        """This rank's walk of a collective. A rank that refuses the call (a buffer outside
        its memory) or hears of a refusal walks on all the same, passing the error in place
        of data, so that every rank ends its walk at once with that error rather than wait
        for a neighbour that has stopped."""
        peers = self._peer_links()
        stream = self._streams.get(call.stream)
        failed: list[CUDARuntimeError] = []
        collective = RingCollective(call, self.backend, stream, lambda: bool(failed))
        send_bytes, recv_bytes = collective.buffer_sizes()
        try:
            self._allocations.check(call.send, send_bytes, "collective send buffer")
            self._allocations.check(call.recv, recv_bytes, "collective receive buffer")
        except CUDARuntimeError as exc:
            failed.append(exc)
        outbound = peers.outbound(call.next) if call.ranks > 1 else None
        with self._unlocked():
            inbound = peers.inbound.get(call.prev) if call.ranks > 1 else None
        scratch = 0 if failed else collective.scratch_bytes()
        self._quota.reserve(scratch, self.backend.own_memory())
        ptr = self.backend.malloc(scratch) if scratch else 0

        kind = pb.Collective.Kind.Name(call.kind).lower()  # the names counters.COLLECTIVES has

        def send(src: int, size: int) -> None:
            assert outbound is not None
            if failed:
                outbound.send_error(error_message(failed[0]))
            else:
                outbound.send(size, _DeviceSource(self, src, stream))
                self._counts.collective(kind, size)

        def receive(dst: int, size: int) -> None:
            assert inbound is not None
            sink: Sink = DiscardSink() if failed else _PeerSink(self, dst, stream)
            error = inbound.receive(size, sink, DiscardSink())
            if error is not None and not failed:
                failed.append(CUDARuntimeError(error.name, f"collective: {error.message}"))

        try:
            with self._unlocked():
                collective.run(ptr, send, receive)
        finally:
            if ptr:
                self.backend.free(ptr)
            self._quota.release(scratch, self.backend.own_memory())
        if failed:
            raise failed[0]


# The calls an open session serves, by the name of the Request field that carries each; any
# other field of the oneof (``attach``, which only opens a stripe connection) is refused.
_CALLS: dict[str, Callable[[SessionExecutor, Any], pb.Reply | None]] = {
    "open": SessionExecutor._do_open,
    "mem_get_info": SessionExecutor._do_mem_get_info,
    "malloc": SessionExecutor._do_malloc,
    "free": SessionExecutor._do_free,
    "memcpy_dtod": SessionExecutor._do_memcpy_dtod,
    "memset": SessionExecutor._do_memset,
    "module_load": SessionExecutor._do_module_load,
    "module_unload": SessionExecutor._do_module_unload,
    "get_function": SessionExecutor._do_get_function,
    "launch": SessionExecutor._do_launch,
    "stream_create": SessionExecutor._do_stream_create,
    "stream_destroy": SessionExecutor._do_stream_destroy,
    "stream_synchronize": SessionExecutor._do_stream_synchronize,
    "stream_wait_event": SessionExecutor._do_stream_wait_event,
    "event_create": SessionExecutor._do_event_create,
    "event_destroy": SessionExecutor._do_event_destroy,
    "event_record": SessionExecutor._do_event_record,
    "event_query": SessionExecutor._do_event_query,
    "event_synchronize": SessionExecutor._do_event_synchronize,
    "event_elapsed_time": SessionExecutor._do_event_elapsed_time,
    "device_synchronize": SessionExecutor._do_device_synchronize,
    "array_op": SessionExecutor._do_array_op,
    "torch_op": SessionExecutor._do_torch_op,
    "peer_connect": SessionExecutor._do_peer_connect,
    "peer_send": SessionExecutor._do_peer_send,
    "peer_recv": SessionExecutor._do_peer_recv,
    "collective": SessionExecutor._do_collective,
}
