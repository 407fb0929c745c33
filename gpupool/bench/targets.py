"""What the benchmark measures: the same operations natively, remotely, and on the raw link.

Each target times one operation at a time (seconds), so the runner can alternate between
them and every target sees the same machine. Remote targets use the client's sessions,
exactly as ``gpupool.runtime`` does; the native target is CuPy on a local GPU, or, where
there is none, NumPy copies and the CPU emulator run in this process (the remote side's
own backend, without the remoting).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from gpupool.bench.rawlink import RawLink, memcpy_seconds
from gpupool.client.context import Context
from gpupool.client.launches import LaunchEncoder
from gpupool.client.session import Session
from gpupool.proto import gpupool_pb2 as pb
from gpupool.proto.kernel_args import POINTER, Signature

NOOP = 'extern "C" __global__ void noop(int* p) {}'


class Target(ABC):
    """Something that can copy and launch; ``name`` is its ``transport`` in the records."""

    name: str
    native = False

    def prepare(self, size: int) -> None:
        """Allocate what copies of ``size`` bytes need (before timing)."""
        return None

    @abstractmethod
    def h2d(self, size: int) -> float: ...

    @abstractmethod
    def d2h(self, size: int) -> float: ...

    def d2d(self, size: int) -> float | None:
        return None  # the raw link has no device

    def tiny_round_trip(self) -> float | None:
        return None

    def launches(self, count: int) -> float | None:
        return None

    def release(self) -> None:
        """Free what ``prepare`` allocated."""
        return None

    def close(self) -> None:
        return None


class RemoteTarget(Target):
    """Device 0 of a daemon, over one transport, copying from and to NumPy arrays (``name``:
    the records' name for it)."""

    def __init__(self, address: str, transport: str, name: str | None = None) -> None:
        self.name = name or transport
        self._context = Context([address], transport=transport)
        self._session: Session = self._context.session(0)
        self._buffers: list[int] = []
        self._host = np.empty(0, np.uint8)
        self._function = 0

    def prepare(self, size: int) -> None:
        self._host = np.ones(size, np.uint8)
        self._buffers = [self._malloc(size), self._malloc(size)]

    def h2d(self, size: int) -> float:
        header = pb.Request(memcpy_htod=pb.MemcpyHtoD(dst=self._buffers[0], size=size))
        start = time.perf_counter()
        self._session.write(header, self._host.data[:size], wait=True)
        return time.perf_counter() - start

    def d2h(self, size: int) -> float:
        request = pb.Request(memcpy_dtoh=pb.MemcpyDtoH(src=self._buffers[0], size=size))
        start = time.perf_counter()
        self._session.read(request, self._host.data[:size])
        return time.perf_counter() - start

    def d2d(self, size: int) -> float | None:
        dst, src = self._buffers[1], self._buffers[0]
        copy = pb.Request(memcpy_dtod=pb.MemcpyDtoD(dst=dst, src=src, size=size))
        start = time.perf_counter()
        self._session.submit(copy)
        self._session.call(pb.Request(device_synchronize=pb.DeviceSynchronize()))
        return time.perf_counter() - start

    def tiny_round_trip(self) -> float | None:
        if not self._buffers:
            self.prepare(4)
        request = pb.Request(memcpy_dtoh=pb.MemcpyDtoH(src=self._buffers[0], size=4))
        target = memoryview(bytearray(4))
        start = time.perf_counter()
        self._session.read(request, target)
        return time.perf_counter() - start

    def launches(self, count: int) -> float | None:
        if not self._function:
            self._function = self._load_noop()
        if not self._buffers:
            self.prepare(4)
        launches, args = LaunchEncoder(self._function), (_Pointer(self._buffers[0]),)
        start = time.perf_counter()
        for _ in range(count):  # as a kernel call of the shim encodes and queues a launch
            self._session.submit_entry(launches.entry((1,), (1,), args, 0, 0))
        self._session.call(pb.Request(device_synchronize=pb.DeviceSynchronize()))
        return time.perf_counter() - start

    def release(self) -> None:
        for ptr in self._buffers:
            self._session.submit(pb.Request(free=pb.Free(ptr=ptr)))
        self._session.call(pb.Request(device_synchronize=pb.DeviceSynchronize()))
        self._buffers = []

    def close(self) -> None:
        self._context.close()

    def _malloc(self, size: int) -> int:
        ptr: int = self._session.call(pb.Request(malloc=pb.Malloc(size=size))).ptr
        return ptr

    def _load_noop(self) -> int:
        from gpupool.client.session import new_handle

        module, function = new_handle(), new_handle()
        self._session.call(pb.Request(module_load=pb.ModuleLoad(module=module, cuda_source=NOOP)))
        get = pb.GetFunction(module=module, name="noop", function=function)
        self._session.call(pb.Request(get_function=get))
        return function


class PinnedRemoteTarget(RemoteTarget):
    """Copies over ``transport`` from and to the shim's pinned host memory (``shm-pinned``:
    the worker copies between the device and the client's own pages). Round trips, launches
    and device copies take the same path as the plain target's, so they are not repeated."""

    def __init__(self, address: str, transport: str) -> None:
        super().__init__(address, transport, name=f"{transport}-pinned")

    def prepare(self, size: int) -> None:
        from gpupool.cupy.cuda.pinned_memory import alloc_pinned_memory

        self._buffers = [self._malloc(size), self._malloc(size)]
        pointer: Any = alloc_pinned_memory(size)  # a ctypes array: the buffer protocol
        self._host = np.frombuffer(pointer, np.uint8, size)
        self._host[:] = 1

    def d2d(self, size: int) -> None:
        return None

    def tiny_round_trip(self) -> None:
        return None

    def launches(self, count: int) -> None:
        return None


class _Pointer:
    """A device address as a kernel argument (through ``__cuda_array_interface__``, the way
    any device array reaches a kernel of the shim)."""

    def __init__(self, ptr: int) -> None:
        self.__cuda_array_interface__ = {"data": (ptr, False)}


class RawTcpTarget(Target):
    """The loopback TCP link with nothing on it, over ``stripes`` connections."""

    def __init__(self, link: RawLink, stripes: int) -> None:
        self.name = "raw-tcp" if stripes == 1 else f"raw-tcp-x{stripes}"
        self._link = link
        self._stripes = stripes
        self._host = np.empty(0, np.uint8)

    def prepare(self, size: int) -> None:
        self._host = np.ones(size, np.uint8)

    def h2d(self, size: int) -> float:
        return self._link.send(self._host.data[:size], self._stripes)

    def d2h(self, size: int) -> float:
        return self._link.receive(self._host.data[:size], self._stripes)

    def tiny_round_trip(self) -> float | None:
        return self._link.round_trip() if self._stripes == 1 else None


class RawMemoryTarget(Target):
    """The link of ``shm://``: one host memory copy each way, messages on a Unix socket."""

    name = "raw-shm"

    def __init__(self, link: RawLink) -> None:
        self._link = link
        self._a = self._b = np.empty(0, np.uint8)

    def prepare(self, size: int) -> None:
        self._a, self._b = np.ones(size, np.uint8), np.empty(size, np.uint8)

    def h2d(self, size: int) -> float:
        return memcpy_seconds(self._b, self._a)

    def d2h(self, size: int) -> float:
        return memcpy_seconds(self._a, self._b)

    def tiny_round_trip(self) -> float:
        return self._link.round_trip(unix=True)


class NumpyNativeTarget(Target):
    """No local GPU: host copies for bandwidth, the emulator in this process for launches."""

    name = "native"
    native = True

    def __init__(self) -> None:
        self._host = self._device = self._other = np.empty(0, np.uint8)
        self._emulator: _LocalEmulator | None = None

    def prepare(self, size: int) -> None:
        self._host = np.ones(size, np.uint8)
        self._device, self._other = np.empty(size, np.uint8), np.empty(size, np.uint8)

    def h2d(self, size: int) -> float:
        return memcpy_seconds(self._device, self._host)

    def d2h(self, size: int) -> float:
        return memcpy_seconds(self._host, self._device)

    def d2d(self, size: int) -> float:
        return memcpy_seconds(self._other, self._device)

    def tiny_round_trip(self) -> float:
        return memcpy_seconds(np.empty(4, np.uint8), np.ones(4, np.uint8))

    def launches(self, count: int) -> float:
        if self._emulator is None:
            self._emulator = _LocalEmulator()
        return self._emulator.launches(count)

    def close(self) -> None:
        if self._emulator is not None:
            self._emulator.close()


class _LocalEmulator:
    """The emulator backend in this process: what a launch costs without remoting."""

    def __init__(self) -> None:
        from gpupool.server.backends.emu import EmuBackend, MemoryLedger

        self._ledger = MemoryLedger.create(1 << 30, slots=1)
        self._backend = EmuBackend(0, self._ledger, slot=0)
        module = self._backend.load_module("cuda_source", NOOP, [])
        function = self._backend.get_function(module, "noop")
        self._ptr = self._backend.malloc(4)
        one, signature = (1, 1, 1), Signature.parse(bytes([POINTER]))
        self._launch = self._backend.prepare_launch(function, one, one, 0, None, signature)

    def launches(self, count: int) -> float:
        data = self._ptr.to_bytes(8, "little")
        start = time.perf_counter()
        for _ in range(count):  # a prepared launch, as the daemon makes a repeated one
            self._launch(data)
        self._backend.synchronize()
        return time.perf_counter() - start

    def close(self) -> None:
        self._backend.free(self._ptr)
        self._ledger.close()


class CupyNativeTarget(Target):
    """CuPy on this host's GPU 0, from pinned host memory (or pageable, ``pinned=False``)."""

    native = True

    def __init__(self, pinned: bool) -> None:
        import cupy

        self.name = "native" if pinned else "native-pageable"
        self._cupy = cupy
        self._pinned = pinned
        self._host = np.empty(0, np.uint8)
        self._device = self._other = cupy.empty(0, cupy.uint8)
        self._kernel = cupy.RawKernel(NOOP, "noop")

    def prepare(self, size: int) -> None:
        import cupyx

        cupy = self._cupy
        self._host = cupyx.empty_pinned(size, np.uint8) if self._pinned else np.ones(size, np.uint8)
        self._device, self._other = cupy.empty(size, cupy.uint8), cupy.empty(size, cupy.uint8)

    def h2d(self, size: int) -> float:
        return self._timed(self._device.data.ptr, self._host.ctypes.data, size, 1)

    def d2h(self, size: int) -> float:
        return self._timed(self._host.ctypes.data, self._device.data.ptr, size, 2)

    def d2d(self, size: int) -> float:
        return self._timed(self._other.data.ptr, self._device.data.ptr, size, 3)

    def tiny_round_trip(self) -> float:
        if self._device.nbytes < 4:
            self.prepare(4)
        return self.d2h(4)

    def launches(self, count: int) -> float:
        if self._device.nbytes < 4:
            self.prepare(4)
        runtime = self._cupy.cuda.runtime
        start = time.perf_counter()
        for _ in range(count):
            self._kernel((1,), (1,), (self._device,))
        runtime.deviceSynchronize()
        return time.perf_counter() - start

    def release(self) -> None:
        self._device = self._other = self._cupy.empty(0, self._cupy.uint8)

    def _timed(self, dst: int, src: int, size: int, kind: int) -> float:
        runtime = self._cupy.cuda.runtime
        start = time.perf_counter()
        runtime.memcpy(dst, src, size, kind)
        runtime.deviceSynchronize()
        return time.perf_counter() - start


def native_targets() -> list[Target]:
    """CuPy's pinned and pageable copies where this host has a GPU, else NumPy's."""
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() > 0:
            return [CupyNativeTarget(pinned=True), CupyNativeTarget(pinned=False)]
    except Exception:  # no CuPy, no driver, no device: all mean "no local GPU"
        pass
    return [NumpyNativeTarget()]
