"""The CUDA runtime API over the wire, with ``cupy.cuda.runtime``'s names and signatures.

Device pointers are plain ints, as in CuPy, each naming its device (unified addressing:
``gpupool.client.addressing``), so a copy between two devices of the context, on one daemon
or two, goes worker to worker. Host buffers are given as addresses (``array.ctypes.data``)
or as objects with the buffer protocol. Launches, frees,
memsets, device-to-device and small asynchronous copies are queued and do not wait; copies
to the host, synchronizations, ``malloc`` and queries wait, and report any error an earlier
queued call caused, with its CUDA error name.
"""

from __future__ import annotations

import ctypes
from typing import Any

from gpupool.client import addressing, context
from gpupool.client.session import STATS, Session, new_handle
from gpupool.errors import CUDARuntimeError
from gpupool.proto import gpupool_pb2 as pb

__all__ = [
    "deviceCanAccessPeer",
    "deviceDisablePeerAccess",
    "deviceEnablePeerAccess",
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
    "memcpyPeer",
    "memcpyPeerAsync",
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


def deviceCanAccessPeer(device: int, peer_device: int) -> int:
    """1 for any two devices of the context: their workers copy to each other directly."""
    ctx = context.current()
    ctx.device(device)
    ctx.device(peer_device)
    return int(device != peer_device)


def deviceEnablePeerAccess(peer_device: int, flags: int = 0) -> None:
    if flags:
        raise CUDARuntimeError("cudaErrorInvalidValue", f"flags {flags}: must be 0")
    ctx = context.current()
    ctx.peers.enable(ctx.current_device, peer_device)


def deviceDisablePeerAccess(peer_device: int) -> None:
    ctx = context.current()
    ctx.peers.disable(ctx.current_device, peer_device)


# memory


def memGetInfo() -> tuple[int, int]:
    info = _session().call(pb.Request(mem_get_info=pb.MemGetInfo())).mem_info
    return info.free, info.total


def malloc(size: int) -> int:
    ctx = context.current()
    ordinal = ctx.current_device
    STATS.mallocs += 1
    raw = ctx.session(ordinal).call(pb.Request(malloc=pb.Malloc(size=_size(size)))).ptr
    return addressing.tag(ordinal, raw)


def free(ptr: int) -> None:
    _device_session(ptr).submit(pb.Request(free=pb.Free(ptr=addressing.raw(ptr))))


def _device_of(ptr: int) -> int:
    return addressing.device_of(ptr, context.current().current_device)


def _device_session(ptr: int) -> Session:
    """The session of the device ``ptr`` is on (the current device's for an untagged one)."""
    ctx = context.current()
    return ctx.session(addressing.device_of(ptr, ctx.current_device))


def _stream_for(ptr: int, stream: int) -> int:
    """``stream`` (of the current device) where ``ptr`` is on it, else that device's null
    stream: a stream handle names a stream of one device only."""
    return stream if _device_of(ptr) == context.current().current_device else 0


def memcpy(dst: Any, src: Any, size: int, kind: int) -> None:
    """Copy ``size`` bytes; returns once the copy is done (device-to-device: once queued)."""
    _copy(dst, src, _size(size), kind, stream=0, wait=True)


def memcpyAsync(dst: Any, src: Any, size: int, kind: int, stream: int = 0) -> None:
    """Copy ``size`` bytes in stream order; the source may be reused once this returns."""
    _copy(dst, src, _size(size), kind, stream=stream, wait=False)


def memcpyPeer(dst: int, dst_device: int, src: int, src_device: int, size: int) -> None:
    """Copy between two devices, worker to worker; returns once queued, as CUDA's."""
    memcpyPeerAsync(dst, dst_device, src, src_device, size, 0)


def memcpyPeerAsync(
    dst: int, dst_device: int, src: int, src_device: int, size: int, stream: int = 0
) -> None:
    ctx = context.current()
    for ptr, device in ((dst, dst_device), (src, src_device)):
        ctx.device(device)
        if addressing.device_of(ptr, device) != device:
            raise CUDARuntimeError(
                "cudaErrorInvalidValue",
                f"pointer 0x{ptr:x} is on device {addressing.device_of(ptr, device)}, not {device}",
            )
    _device_copy(dst_device, dst, src_device, src, _size(size), stream)


def _device_copy(
    dst_device: int, dst: int, src_device: int, src: int, size: int, stream: int
) -> None:
    ctx = context.current()
    if dst_device == src_device:
        call = pb.MemcpyDtoD(
            dst=addressing.raw(dst),
            src=addressing.raw(src),
            size=size,
            stream=stream if dst_device == ctx.current_device else 0,
        )
        ctx.session(dst_device).submit(pb.Request(memcpy_dtod=call))
        return
    raw_dst, raw_src = addressing.raw(dst), addressing.raw(src)
    if ctx.peers.reachable(src_device, dst_device):
        ctx.peers.copy(dst_device, raw_dst, src_device, raw_src, size, stream)
        return
    # the source's worker opens no peer links (a confined emulator worker has no sockets of
    # its own): the bytes go through this process, as they did before peer links
    host = memoryview(bytearray(size))
    read = pb.MemcpyDtoH(src=raw_src, size=size, stream=_stream_for(src, stream))
    ctx.session(src_device).read(pb.Request(memcpy_dtoh=read), host)
    write = pb.MemcpyHtoD(dst=raw_dst, size=size, stream=_stream_for(dst, stream))
    ctx.session(dst_device).write(pb.Request(memcpy_htod=write), host, False)


def _direction(dst: Any, src: Any) -> int:
    """memcpyDefault's direction, from which of the pointers are tagged device pointers."""
    device_dst = isinstance(dst, int) and addressing.is_device(dst)
    device_src = isinstance(src, int) and addressing.is_device(src)
    return (memcpyHostToHost, memcpyHostToDevice, memcpyDeviceToHost, memcpyDeviceToDevice)[
        device_dst + 2 * device_src
    ]


def _copy(dst: Any, src: Any, size: int, kind: int, stream: int, wait: bool) -> None:
    if kind == memcpyDefault:
        kind = _direction(dst, src)
    if kind == memcpyHostToDevice:
        call = pb.MemcpyHtoD(dst=addressing.raw(dst), size=size, stream=_stream_for(dst, stream))
        _device_session(dst).write(pb.Request(memcpy_htod=call), _host(src, size, False), wait)
    elif kind == memcpyDeviceToHost:
        read = pb.MemcpyDtoH(src=addressing.raw(src), size=size, stream=_stream_for(src, stream))
        _device_session(src).read(pb.Request(memcpy_dtoh=read), _host(dst, size, writable=True))
    elif kind == memcpyDeviceToDevice:
        _device_copy(_device_of(dst), dst, _device_of(src), src, size, stream)
    elif kind == memcpyHostToHost:
        _host(dst, size, writable=True)[:] = _host(src, size, writable=False)
    else:
        raise CUDARuntimeError("cudaErrorInvalidMemcpyDirection", f"memcpy kind {kind}")


def memset(ptr: int, value: int, size: int) -> None:
    memsetAsync(ptr, value, size, 0)


def memsetAsync(ptr: int, value: int, size: int, stream: int = 0) -> None:
    request = pb.Memset(
        ptr=addressing.raw(ptr),
        value=value & 0xFF,
        size=_size(size),
        stream=_stream_for(ptr, stream),
    )
    _device_session(ptr).submit(pb.Request(memset=request))


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
