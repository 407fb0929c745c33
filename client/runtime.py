"""The CUDA runtime API over the wire, with ``cupy.cuda.runtime``'s names and signatures.

Pointers are the daemon's device addresses (plain ints, as in CuPy). Host buffers are given
as addresses (``array.ctypes.data``) or as objects with the buffer protocol. Launches, frees,
memsets, device-to-device and small asynchronous copies are queued and do not wait; copies
to the host, synchronizations, ``malloc`` and queries wait, and report any error an earlier
queued call caused, with its CUDA error name.
"""

from __future__ import annotations

import ctypes
from typing import Any

from gpupool.client import context
from gpupool.client.session import STATS, Session, new_handle
from gpupool.errors import CUDARuntimeError
from gpupool.proto import gpupool_pb2 as pb

__all__ = [
    "deviceSynchronize",
    "driverGetVersion",
    "eventBlockingSync",
    "eventCreate",
    "eventCreateWithFlags",
    "eventDestroy",
    "eventDisableTiming",
    "eventElapsedTime",
    "eventQuery",
    "eventRecord",
    "eventSynchronize",
    "free",
    "getDevice",
    "getDeviceCount",
    "getDeviceProperties",
    "malloc",
    "memGetInfo",
    "memcpy",
    "memcpyAsync",
    "memcpyDefault",
    "memcpyDeviceToDevice",
    "memcpyDeviceToHost",
    "memcpyHostToDevice",
    "memcpyHostToHost",
    "memset",
    "memsetAsync",
    "runtimeGetVersion",
    "setDevice",
    "streamCreate",
    "streamCreateWithFlags",
    "streamDestroy",
    "streamNonBlocking",
    "streamSynchronize",
    "streamWaitEvent",
]

memcpyHostToHost = 0
memcpyHostToDevice = 1
memcpyDeviceToHost = 2
memcpyDeviceToDevice = 3
memcpyDefault = 4
eventBlockingSync = 1
eventDisableTiming = 2
streamNonBlocking = 1
CUDA_VERSION = 13000  # the CUDA runtime API these calls follow (13.0), as CUDA encodes it
_MAX_SIZE = 1 << 48  # no device or host buffer is larger; bigger sizes are mistakes


def _session() -> Session:
    return context.current().session()


def _size(size: int) -> int:
    if not 0 <= size < _MAX_SIZE:
        raise CUDARuntimeError("cudaErrorInvalidValue", f"invalid size {size}")
    return size


def _host(buffer: Any, size: int, writable: bool) -> memoryview:
    """A view of ``size`` host bytes at an address or in a buffer-protocol object."""
    if isinstance(buffer, int):
        if buffer == 0 and size:
            raise CUDARuntimeError("cudaErrorInvalidValue", "host pointer is NULL")
        return memoryview((ctypes.c_char * size).from_address(buffer)).cast("B")
    view = memoryview(buffer).cast("B")
    if view.nbytes < size:
        raise CUDARuntimeError(
            "cudaErrorInvalidValue", f"host buffer of {view.nbytes} bytes for a {size}-byte copy"
        )
    if writable and view.readonly:
        raise CUDARuntimeError("cudaErrorInvalidValue", "host buffer is read-only")
    return view[:size]


# devices


def runtimeGetVersion() -> int:
    """The CUDA runtime API version these calls follow (``1000 * major + 10 * minor``): the
    remote devices are reached through this API, not a local CUDA runtime."""
    return CUDA_VERSION


def driverGetVersion() -> int:
    """The CUDA version the driver must support for these calls: that of the API they follow
    (the daemons' own drivers are theirs to check)."""
    return CUDA_VERSION


def getDeviceCount() -> int:
    return len(context.current().devices)


def setDevice(device: int) -> None:
    context.current().current_device = device


def getDevice() -> int:
    return context.current().current_device


def getDeviceProperties(device: int) -> dict[str, Any]:
    """The device's properties, with the keys CuPy's ``getDeviceProperties`` uses."""
    props = context.current().properties(device)
    return {
        "name": props.name.encode(),
        "totalGlobalMem": props.total_memory,
        "major": props.major,
        "minor": props.minor,
        "multiProcessorCount": props.multiprocessor_count,
        "maxThreadsPerBlock": props.max_threads_per_block,
        "warpSize": props.warp_size,
        "sharedMemPerBlock": props.shared_memory_per_block,
        "clockRate": props.clock_rate_khz,
    }


def deviceSynchronize() -> None:
    _session().call(pb.Request(device_synchronize=pb.DeviceSynchronize()))


# memory


def memGetInfo() -> tuple[int, int]:
    info = _session().call(pb.Request(mem_get_info=pb.MemGetInfo())).mem_info
    return info.free, info.total


def malloc(size: int) -> int:
    session = _session()
    STATS.mallocs += 1
    return session.call(pb.Request(malloc=pb.Malloc(size=_size(size)))).ptr


def free(ptr: int) -> None:
    _session().submit(pb.Request(free=pb.Free(ptr=ptr)))


def memcpy(dst: Any, src: Any, size: int, kind: int) -> None:
    """Copy ``size`` bytes; returns once the copy is done (device-to-device: once queued)."""
    _copy(dst, src, _size(size), kind, stream=0, wait=True)


def memcpyAsync(dst: Any, src: Any, size: int, kind: int, stream: int = 0) -> None:
    """Copy ``size`` bytes in stream order; the source may be reused once this returns."""
    _copy(dst, src, _size(size), kind, stream=stream, wait=False)


def _copy(dst: Any, src: Any, size: int, kind: int, stream: int, wait: bool) -> None:
    if kind == memcpyHostToDevice:
        header = pb.Request(memcpy_htod=pb.MemcpyHtoD(dst=dst, size=size, stream=stream))
        _session().write(header, _host(src, size, writable=False), wait)
    elif kind == memcpyDeviceToHost:
        request = pb.Request(memcpy_dtoh=pb.MemcpyDtoH(src=src, size=size, stream=stream))
        _session().read(request, _host(dst, size, writable=True))
    elif kind == memcpyDeviceToDevice:
        request = pb.Request(memcpy_dtod=pb.MemcpyDtoD(dst=dst, src=src, size=size, stream=stream))
        _session().submit(request)
    elif kind == memcpyHostToHost:
        _host(dst, size, writable=True)[:] = _host(src, size, writable=False)
    else:
        raise CUDARuntimeError(
            "cudaErrorInvalidMemcpyDirection",
            f"memcpy kind {kind}: name the direction (memcpyDefault needs unified addressing)",
        )


def memset(ptr: int, value: int, size: int) -> None:
    memsetAsync(ptr, value, size, 0)


def memsetAsync(ptr: int, value: int, size: int, stream: int = 0) -> None:
    request = pb.Memset(ptr=ptr, value=value & 0xFF, size=_size(size), stream=stream)
    _session().submit(pb.Request(memset=request))


# streams


def streamCreate() -> int:
    return streamCreateWithFlags(0)


def streamCreateWithFlags(flags: int) -> int:
    handle = new_handle()
    _session().submit(pb.Request(stream_create=pb.StreamCreate(stream=handle)))
    return handle


def streamDestroy(stream: int) -> None:
    _session().submit(pb.Request(stream_destroy=pb.StreamDestroy(stream=stream)))


def streamSynchronize(stream: int) -> None:
    _session().call(pb.Request(stream_synchronize=pb.StreamSynchronize(stream=stream)))


def streamWaitEvent(stream: int, event: int, flags: int = 0) -> None:
    request = pb.StreamWaitEvent(stream=stream, event=event)
    _session().submit(pb.Request(stream_wait_event=request))


# events


def eventCreate() -> int:
    return eventCreateWithFlags(0)


def eventCreateWithFlags(flags: int) -> int:
    handle = new_handle()
    request = pb.EventCreate(event=handle, disable_timing=bool(flags & eventDisableTiming))
    _session().submit(pb.Request(event_create=request))
    return handle


def eventDestroy(event: int) -> None:
    _session().submit(pb.Request(event_destroy=pb.EventDestroy(event=event)))


def eventRecord(event: int, stream: int = 0) -> None:
    _session().submit(pb.Request(event_record=pb.EventRecord(event=event, stream=stream)))


def eventQuery(event: int) -> int:
    """0 (cudaSuccess) when the event has completed, else 600 (cudaErrorNotReady), as CuPy."""
    ready = _session().call(pb.Request(event_query=pb.EventQuery(event=event))).ready
    return 0 if ready else CUDARuntimeError("cudaErrorNotReady").status


def eventSynchronize(event: int) -> None:
    _session().call(pb.Request(event_synchronize=pb.EventSynchronize(event=event)))


def eventElapsedTime(start: int, end: int) -> float:
    request = pb.EventElapsedTime(start=start, end=end)
    return _session().call(pb.Request(event_elapsed_time=request)).elapsed_ms
