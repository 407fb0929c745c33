"""``cupy.cuda.Stream`` and ``Event``: handles the client chooses, so making one costs nothing.

The current stream is per thread and per device, as in CuPy: ``with stream:`` or
``stream.use()`` makes kernels, copies and pool allocations of this thread on the stream's
device go to it. Streams and events belong to the device that was current when they were
made; their calls go to that device's session whichever device is current later.
"""

from __future__ import annotations

import threading
from types import TracebackType

from gpupool.client import runtime
from gpupool.cupy.cuda.device import Device, release_at_collection

_local = threading.local()


def _current_streams() -> dict[int, Stream]:
    streams: dict[int, Stream] | None = getattr(_local, "streams", None)
    if streams is None:
        streams = _local.streams = {}
    return streams


def get_current_stream(device_id: int | None = None) -> Stream:
    """This thread's current stream on ``device_id`` (the current device by default)."""
    device = runtime.getDevice() if device_id is None else device_id
    return _current_streams().get(device, Stream.null)


class _PerThreadDefault:
    """``Stream.ptds``: this thread's own default stream on the current device, made on first
    use (work on it is not ordered with other threads', as CUDA's per-thread stream)."""

    def __get__(self, instance: object, owner: type) -> Stream:
        streams: dict[int, Stream] | None = getattr(_local, "ptds", None)
        if streams is None:
            streams = _local.ptds = {}
        device = runtime.getDevice()
        if device not in streams:
            streams[device] = Stream(null=True, ptds=True)
        return streams[device]


class Stream:
    """A CUDA stream on the device current when it was made; ``Stream.null`` is the null stream,
    ``Stream.ptds`` this thread's per-thread default stream."""

    null: Stream  # set below
    ptds = _PerThreadDefault()

    def __init__(self, null: bool = False, non_blocking: bool = False, ptds: bool = False) -> None:
        if ptds and not null:
            raise ValueError("ptds requires null=True")
        if ptds:  # this thread's own default stream: not ordered with other threads' work
            null, non_blocking = False, True
        self.non_blocking = non_blocking
        self._device_id: int | None = None
        self.ptr = 0
        self._previous: list[Stream] = []
        if not null:
            self._device_id = runtime.getDevice()
            flags = runtime.streamNonBlocking if non_blocking else 0
            self.ptr = runtime.streamCreateWithFlags(flags)
            release_at_collection(self, self._device_id, runtime.streamDestroy, self.ptr)

    @classmethod
    def from_external(cls, ptr: int, device_id: int = -1) -> Stream:
        """A ``Stream`` object for a stream handle made elsewhere (``runtime.streamCreate``):
        it is used, never destroyed here."""
        stream = cls.__new__(cls)
        stream.non_blocking = False
        stream._device_id = runtime.getDevice() if device_id < 0 else device_id
        stream.ptr = int(ptr)
        stream._previous = []
        return stream

    @property
    def device_id(self) -> int:
        """The stream's device (for the null stream: the current device)."""
        return runtime.getDevice() if self._device_id is None else self._device_id

    def use(self) -> Stream:
        """Make this the current stream of this thread on its device."""
        _current_streams()[self.device_id] = self
        return self

    def __enter__(self) -> Stream:
        self._previous.append(get_current_stream(self.device_id))
        return self.use()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._previous.pop().use()

    def synchronize(self) -> None:
        """Wait until the work queued on this stream has run."""
        with Device(self.device_id):
            runtime.streamSynchronize(self.ptr)

    def record(self, event: Event | None = None) -> Event:
        """Record ``event`` (a new one by default) on this stream and return it."""
        if event is None:
            with Device(self.device_id):
                event = Event()
        event.record(self)
        return event

    def wait_event(self, event: Event) -> None:
        """Make later work on this stream wait for ``event`` (no wait on the host)."""
        with Device(self.device_id):
            runtime.streamWaitEvent(self.ptr, event.ptr)

    @property
    def done(self) -> bool:
        """True when all work queued on this stream has run (one round trip)."""
        return self.record(Event(disable_timing=True)).done

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Stream)
            and other.ptr == self.ptr
            and other.device_id == self.device_id
        )

    def __hash__(self) -> int:
        return hash((self.ptr, self._device_id))

    def __repr__(self) -> str:
        where = "null" if self._device_id is None else f"device {self._device_id}"
        return f"<Stream {self.ptr} ({where})>"


Stream.null = Stream(null=True)


class Event:
    """A CUDA event on the device current when it was made, as CuPy's ``Event``."""

    def __init__(
        self, block: bool = False, disable_timing: bool = False, interprocess: bool = False
    ) -> None:
        if interprocess:
            raise NotImplementedError(
                "Event(interprocess=True): IPC events are not supported remotely (docs/cupy.md)"
            )
        self.block = block
        self.disable_timing = disable_timing
        self.device_id = runtime.getDevice()
        flags = (runtime.eventBlockingSync if block else 0) | (
            runtime.eventDisableTiming if disable_timing else 0
        )
        self.ptr = runtime.eventCreateWithFlags(flags)
        release_at_collection(self, self.device_id, runtime.eventDestroy, self.ptr)

    def record(self, stream: Stream | None = None) -> None:
        """Record this event on ``stream`` (the current stream of its device by default)."""
        if stream is None:
            stream = get_current_stream(self.device_id)
        with Device(self.device_id):
            runtime.eventRecord(self.ptr, stream.ptr)

    def synchronize(self) -> None:
        """Wait until the work before this event's record has run."""
        with Device(self.device_id):
            runtime.eventSynchronize(self.ptr)

    def query(self) -> bool:
        """True when the work before this event's record has run (one round trip)."""
        with Device(self.device_id):
            return runtime.eventQuery(self.ptr) == 0

    @property
    def done(self) -> bool:
        return self.query()

    def __repr__(self) -> str:
        return f"<Event {self.ptr} (device {self.device_id})>"


def get_elapsed_time(start_event: Event, end_event: Event) -> float:
    """Milliseconds between two recorded events of one device."""
    with Device(start_event.device_id):
        return runtime.eventElapsedTime(start_event.ptr, end_event.ptr)
