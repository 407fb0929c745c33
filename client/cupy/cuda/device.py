"""``cupy.cuda.Device``: a device ordinal that can be made current, as a context manager too."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from types import TracebackType
from typing import Any

from gpupool.client import context, runtime


class Device:
    """A remote device by ordinal (the current one when none is given), as CuPy's ``Device``.

    ``with Device(1):`` makes device 1 current in this thread and restores the previous device
    on leaving, even when the block raises.
    """

    def __init__(self, device: Any = None) -> None:
        self.id = runtime.getDevice() if device is None else int(device)
        self._previous: list[int] = []

    def use(self) -> None:
        """Make this device the current one of this thread."""
        runtime.setDevice(self.id)

    def __enter__(self) -> Device:
        self._previous.append(runtime.getDevice())
        runtime.setDevice(self.id)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        # the device current before, even one detached meanwhile (its calls then raise)
        context.current().restore_device(self._previous.pop())

    def synchronize(self) -> None:
        """Wait until everything queued on this device has run (reports held errors)."""
        with self:
            runtime.deviceSynchronize()

    @property
    def compute_capability(self) -> str:
        """``"80"`` for compute capability 8.0, as CuPy writes it."""
        props = runtime.getDeviceProperties(self.id)
        return f"{props['major']}{props['minor']}"

    @property
    def mem_info(self) -> tuple[int, int]:
        """(free, total) bytes of this device."""
        with self:
            return runtime.memGetInfo()

    def can_access_peer(self, peer_device_id: int) -> bool:
        """True for any other device of the context: its worker copies to this one's."""
        return runtime.deviceCanAccessPeer(self.id, int(peer_device_id)) == 1

    def __int__(self) -> int:
        return self.id

    def __index__(self) -> int:
        return self.id

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Device) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def __repr__(self) -> str:
        return f"<CUDA Device {self.id}>"


def _release(
    owner_context: context.Context, device_id: int, release: Callable[[int], None], handle: int
) -> None:
    if context.active() is not owner_context or not owner_context.attached(device_id):
        return  # that connection or device has ended, and its daemon released what it held
    with Device(device_id):
        release(handle)


def release_at_collection(
    owner: object, device_id: int, release: Callable[[int], None], handle: int
) -> None:
    """Queue ``release(handle)`` on ``device_id`` once ``owner`` is collected (a free, a stream
    or event destroy: queued calls, no round trip). Not at exit: the session's end releases
    everything it holds; nor after a reconnection or a detach, for the same reason."""
    finalizer = weakref.finalize(owner, _release, context.current(), device_id, release, handle)
    finalizer.atexit = False
