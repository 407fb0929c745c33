"""The pool's devices as PyTorch sees them: sessions, memory, copies and seeds, per ordinal.

Ordinal ``i`` of ``torch.device("gpupool", i)`` is ordinal ``i`` of the process's
``gpupool.client`` context: the same daemons, sessions and leases as the CuPy side. Device
memory comes from the CuPy shim's memory pool (the same blocks a CuPy array would get, freed
ones reused with no call to the daemon), and a device that has no room raises PyTorch's
``torch.OutOfMemoryError``.

A seed (``torch.manual_seed``) is kept here and queued on each device before its next
operation, so seeding opens no session and costs no round trip.
"""

from __future__ import annotations

import threading

import torch

from gpupool.client import context
from gpupool.cupy.cuda import memory
from gpupool.errors import GpupoolError
from gpupool.proto import gpupool_pb2 as pb


class DeviceState:
    """One ordinal's session, its memory pool, and the seed generation it has been given."""

    __slots__ = ("index", "pool", "seeded", "session")

    def __init__(self, index: int, current: context.Context) -> None:
        self.index = index
        self.session = current.session(index)
        self.seeded = 0  # the seed generation queued on this device
        previous = current.current_device
        current.current_device = index
        try:  # the pool CuPy's arrays on this device use
            self.pool = memory.get_default_memory_pool()._pool()
        finally:
            current.current_device = previous


class Devices:
    """The ordinals of the current context (forgotten when the process connects elsewhere)."""

    def __init__(self) -> None:
        self._context: context.Context | None = None
        self._states: dict[int, DeviceState] = {}
        self._lock = threading.Lock()
        self.seed_generation = 0
        self.seed = 0
        self._local = threading.local()

    def context(self) -> context.Context:
        return context.current()

    def state(self, index: int | None) -> DeviceState:
        """The state of ordinal ``index`` (the current device when None)."""
        current = context.current()
        if current is not self._context:
            with self._lock:
                self._context, self._states = current, {}
        if index is None:
            index = self.current
        state = self._states.get(index)
        if state is None:
            state = self._states[index] = DeviceState(index, current)
        return state

    @property
    def current(self) -> int:
        return getattr(self._local, "device", 0)

    @current.setter
    def current(self, index: int) -> None:
        context.current().device(index)  # validates
        self._local.device = index

    def count(self) -> int:
        try:
            return len(context.current().devices)
        except GpupoolError:
            return 0

    def manual_seed_all(self, seed: int) -> None:
        """Seed every device's generator: queued before each device's next operation."""
        self.seed = int(seed) & 0xFFFF_FFFF_FFFF_FFFF
        self.seed_generation += 1

    def open_states(self) -> list[DeviceState]:
        return list(self._states.values())


DEVICES = Devices()


def allocate(state: DeviceState, nbytes: int) -> memory.MemoryPointer:
    """``nbytes`` of device memory on the device (from its pool, which allocates on the
    current device when it has no free block)."""
    current = context.current()
    previous = current.current_device
    try:
        if previous != state.index:
            current.current_device = state.index
        return state.pool.malloc(nbytes)
    except memory.OutOfMemoryError as exc:
        raise torch.OutOfMemoryError(f"gpupool:{state.index}: {exc}") from exc
    finally:
        if previous != state.index:
            current.current_device = previous


def read(state: DeviceState, ptr: int, target: memoryview) -> None:
    """Copy device bytes at ``ptr`` into host memory (waits: a round trip)."""
    if len(target):
        request = pb.Request(memcpy_dtoh=pb.MemcpyDtoH(src=ptr, size=len(target), stream=0))
        state.session.read(request, target)


def write(state: DeviceState, ptr: int, data: memoryview) -> None:
    """Copy host bytes to the device at ``ptr``, queued in stream order (no wait)."""
    if len(data):
        header = pb.Request(memcpy_htod=pb.MemcpyHtoD(dst=ptr, size=len(data), stream=0))
        state.session.write(header, data, wait=False)


def synchronize(index: int | None = None) -> None:
    """Wait for the queued work of ``index`` (every open device when None)."""
    states = DEVICES.open_states() if index is None else [DEVICES.state(index)]
    for state in states:
        state.session.call(pb.Request(device_synchronize=pb.DeviceSynchronize()))


def mem_get_info(index: int | None = None) -> tuple[int, int]:
    info = DEVICES.state(index).session.call(pb.Request(mem_get_info=pb.MemGetInfo())).mem_info
    return int(info.free), int(info.total)
