"""PyTorch on the pool's GPUs: a device named ``gpupool``.

``import gpupool.torch`` registers PyTorch's ``PrivateUse1`` backend under the name
``gpupool`` (with a device guard, hooks and this module as ``torch.gpupool``), so that
``torch.device("gpupool", i)`` is ordinal ``i`` of the process's gpupool context and tensors
made there live on the daemons. ``torch.gpupool`` has the ``torch.cuda`` functions a program
uses: ``is_available``, ``device_count``, ``current_device``, ``set_device``,
``synchronize``, ``manual_seed(_all)``, ``memory_allocated``, ``memory_reserved``,
``mem_get_info``, ``empty_cache``. ``gpupool.torch.cuda`` makes a program written for CUDA
use these devices (``gpupool run --torch``). docs/torch.md says what differs from CUDA.
"""

from __future__ import annotations

import functools

import torch
import torch.serialization
from torch.utils.backend_registration import _setup_privateuseone_for_python_backend

from gpupool.cupy.cuda import memory as _memory
from gpupool.torch import _device, _dispatch, _tensor
from gpupool.torch._dispatch import HOST_OPS
from gpupool.torch._tensor import RemoteTensor

__all__ = [
    "HOST_OPS",
    "RemoteTensor",
    "current_device",
    "device_count",
    "empty_cache",
    "initial_seed",
    "is_available",
    "manual_seed",
    "manual_seed_all",
    "mem_get_info",
    "memory_allocated",
    "memory_reserved",
    "set_device",
    "synchronize",
]


def is_available() -> bool:
    """Whether the process reaches at least one pool device."""
    return _device.DEVICES.count() > 0


def is_initialized() -> bool:
    return True


def _is_in_bad_fork() -> bool:
    return False


def device_count() -> int:
    return _device.DEVICES.count()


def current_device() -> int:
    return _device.DEVICES.current


def set_device(device: int | str | torch.device) -> None:
    index = torch.device(device).index if not isinstance(device, int) else device
    if index is not None:
        _device.DEVICES.current = index


def synchronize(device: int | str | torch.device | None = None) -> None:
    """Wait for the queued work of ``device`` (every device in use by default)."""
    index = None if device is None else _index(device)
    _device.synchronize(index)


def manual_seed(seed: int) -> None:
    """Seed the generators of the pool's devices (torch.manual_seed calls this too)."""
    _device.DEVICES.manual_seed_all(seed)


manual_seed_all = manual_seed


def initial_seed() -> int:
    return _device.DEVICES.seed


def mem_get_info(device: int | str | torch.device | None = None) -> tuple[int, int]:
    """(free, total) bytes of the device, as its daemon reports them (a quota included)."""
    return _device.mem_get_info(None if device is None else _index(device))


def memory_allocated(device: int | str | torch.device | None = None) -> int:
    """Bytes of device memory held by live tensors (and CuPy arrays) on the device."""
    return _pool(device).used_bytes()


def memory_reserved(device: int | str | torch.device | None = None) -> int:
    """Bytes the memory pool holds on the device, free blocks included."""
    return _pool(device).total_bytes()


def empty_cache() -> None:
    """Give the pool's free blocks back to the daemons."""
    _memory.get_default_memory_pool().free_all_blocks()


def _index(device: int | str | torch.device) -> int:
    if isinstance(device, int):
        return device
    index = torch.device(device).index
    return _device.DEVICES.current if index is None else index


def _pool(device: int | str | torch.device | None) -> _memory.SingleDeviceMemoryPool:
    index = _device.DEVICES.current if device is None else _index(device)
    return _device.DEVICES.state(index).pool


class _Hooks(torch._C._acc.PrivateUse1Hooks):
    def is_available(self) -> bool:
        return True

    def has_primary_context(self, dev_id: int) -> bool:
        return True

    def is_built(self) -> bool:
        return True


class _Guard(torch._C._acc.DeviceGuard):
    def type_(self) -> torch._C._autograd.DeviceType:  # type: ignore[override]
        return torch._C._autograd.DeviceType.PrivateUse1


def _register() -> None:
    """Register the backend once (PyTorch allows a single PrivateUse1 backend a process)."""
    import sys

    if torch._C._get_privateuse1_backend_name() == "gpupool":
        return
    _setup_privateuseone_for_python_backend(
        "gpupool", backend_module=sys.modules[__name__], hook=_Hooks(), device_guard=_Guard()
    )
    library = torch.library.Library("_", "IMPL")
    library.fallback(_dispatch.fallback, "PrivateUse1")
    factories = torch.library.Library("aten", "IMPL")
    for op in _dispatch.factories():
        factories.impl(op, functools.partial(_dispatch.fallback, op), "PrivateUse1")
    _LIBRARIES.extend((library, factories))
    torch.serialization.add_safe_globals([_tensor.rebuild])


_LIBRARIES: list[torch.library.Library] = []  # kept alive: dropping one unregisters it
_register()
