"""A program written for CUDA, on the pool's devices: ``cuda`` read as ``gpupool``.

PyTorch's CPU build cannot be made to own a ``cuda`` device (``Tensor.to("cuda")`` fails
before any Python hook sees it, and autograd asks for a CUDA device guard that is not
there), so the mapping is made where programs name CUDA, at the Python level:

- a torch function mode (:class:`CudaAsPool`, entered for good by :func:`install`) that
  rewrites device arguments: ``device="cuda"``, ``"cuda:1"``, ``torch.device("cuda")``
  and ``Tensor.to("cuda")``/``Tensor.cuda()`` become the same ordinal of ``gpupool``;
- the ``torch.cuda`` functions programs call (``is_available``, ``device_count``,
  ``current_device``, ``set_device``, ``synchronize``, ``manual_seed(_all)``,
  ``memory_allocated``, ``memory_reserved``, ``max_memory_allocated``, ``mem_get_info``,
  ``empty_cache``, ``get_device_name``, ``device``) replaced by ``torch.gpupool``'s.

What still differs (``tensor.device.type`` reads ``gpupool``, ``tensor.is_cuda`` is False,
CUDA streams, events and graphs are not there) is listed in docs/torch.md.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

import gpupool.torch as pool

_TO = torch.Tensor.to
_CUDA = torch.Tensor.cuda
_FROM_DATA = (torch.tensor, torch.as_tensor, torch.asarray)


def _on_pool(device: Any) -> bool:
    return isinstance(device, torch.device) and device.type == "gpupool"


def as_pool(device: Any) -> Any:
    """``device`` with ``cuda`` read as ``gpupool`` (anything else unchanged), with the current
    ordinal where it names none: PyTorch's copies would take ordinal 0 for a bare device
    (a Python device guard cannot say which device is current)."""
    if isinstance(device, str) and device.startswith("cuda"):
        device = torch.device(device)
    if isinstance(device, torch.device) and device.type == "cuda":
        index = pool.current_device() if device.index is None else device.index
        return torch.device("gpupool", index)
    return device


class CudaAsPool(TorchFunctionMode):
    """Rewrites the devices torch functions are given: ``cuda`` becomes ``gpupool``."""

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if "device" in kwargs:
            kwargs["device"] = as_pool(kwargs["device"])
            if func in _FROM_DATA and _on_pool(kwargs["device"]):
                # made on the host, then copied: PyTorch builds these with its Python
                # dispatch key excluded, where a Python device's tensor cannot be filled
                device = kwargs.pop("device")
                return func(*args, **kwargs).to(device)
        if func is _TO:
            args = tuple(as_pool(arg) for arg in args)
        elif func is _CUDA:
            device = args[1] if len(args) > 1 else kwargs.pop("device", None)
            if device is None:
                device = pool.current_device()
            index = device if isinstance(device, int) else as_pool(device).index
            return args[0].to(torch.device("gpupool", index), **kwargs)
        return func(*args, **kwargs)


def _get_device_name(device: Any = None) -> str:
    index = pool.current_device() if device is None else torch.device(as_pool(device)).index
    properties = pool._device.DEVICES.context().properties(index or 0)
    return str(properties.name)


@contextlib.contextmanager
def _device(device: Any) -> Iterator[None]:
    """``torch.cuda.device(i)``: make ordinal ``i`` current for a while."""
    previous = pool.current_device()
    index = device if isinstance(device, int) else torch.device(as_pool(device)).index
    if index is not None and index >= 0:
        pool.set_device(index)
    try:
        yield
    finally:
        pool.set_device(previous)


_REPLACED = {
    "is_available": pool.is_available,
    "is_initialized": pool.is_initialized,
    "device_count": pool.device_count,
    "current_device": pool.current_device,
    "set_device": lambda device: pool.set_device(as_pool(device)),
    "synchronize": lambda device=None: pool.synchronize(
        None if device is None else as_pool(device)
    ),
    "manual_seed": pool.manual_seed,
    "manual_seed_all": pool.manual_seed_all,
    "memory_allocated": pool.memory_allocated,
    "memory_reserved": pool.memory_reserved,
    "max_memory_allocated": pool.memory_reserved,
    "mem_get_info": pool.mem_get_info,
    "empty_cache": pool.empty_cache,
    "get_device_name": _get_device_name,
    "device": _device,
    "_lazy_init": lambda: None,
}

_INSTALLED: list[CudaAsPool] = []


def _replace_functions() -> dict[str, Any]:
    """Put torch.gpupool's functions in torch.cuda; the ones they replace."""
    saved = {name: getattr(torch.cuda, name) for name in _REPLACED}
    for name, function in _REPLACED.items():
        setattr(torch.cuda, name, function)
    return saved


@contextlib.contextmanager
def cuda_as_pool() -> Iterator[None]:
    """Read ``cuda`` as ``gpupool`` in this thread for a while (torch.cuda's functions for
    the whole process)."""
    saved = _replace_functions()
    try:
        with CudaAsPool():
            yield
    finally:
        for name, function in saved.items():
            setattr(torch.cuda, name, function)


def install() -> None:
    """Read ``cuda`` as ``gpupool`` in this process from now on (once): ``gpupool run
    --torch`` calls this as the program imports torch."""
    if not _INSTALLED:
        _replace_functions()
        mode = CudaAsPool()
        mode.__enter__()
        _INSTALLED.append(mode)
