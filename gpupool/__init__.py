"""gpupool: remote GPUs that look local.

``gpupool.connect`` names the daemons (or ``GPUPOOL_DAEMONS`` does), ``gpupool.attach`` and
``gpupool.detach`` add and remove GPUs of the pool in a live process; ``gpupool.runtime``
mirrors ``cupy.cuda.runtime``; ``gpupool.Module`` loads CUDA C, PTX or cubin.

The client's names are loaded on first use (PEP 562): a daemon's worker imports
``gpupool.server.worker``, which runs this file too, and must not pay for (or depend on) the
client stack it never uses.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from gpupool.errors import (
    AllocationError,
    CompileError,
    ConnectionLost,
    CUDARuntimeError,
    GpupoolError,
)

if TYPE_CHECKING:
    from gpupool.client import connect, disconnect, stats
    from gpupool.client.module import Function, Module
    from gpupool.elastic import attach, detach, devices, install_cupy, local_pool
    from gpupool.elastic.magics import load_ipython_extension

__version__ = "0.1.0"

# name -> the module that defines it, imported when the name is first asked for
_LAZY = {
    "connect": "gpupool.client",
    "disconnect": "gpupool.client",
    "stats": "gpupool.client",
    "attach": "gpupool.elastic",
    "detach": "gpupool.elastic",
    "devices": "gpupool.elastic",
    "install_cupy": "gpupool.elastic",
    "local_pool": "gpupool.elastic",
    "load_ipython_extension": "gpupool.elastic.magics",  # %load_ext gpupool
    "Function": "gpupool.client.module",
    "Module": "gpupool.client.module",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'gpupool' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "AllocationError",
    "CUDARuntimeError",
    "CompileError",
    "ConnectionLost",
    "Function",
    "GpupoolError",
    "Module",
    "__version__",
    "attach",
    "connect",
    "detach",
    "devices",
    "disconnect",
    "install_cupy",
    "load_ipython_extension",
    "local_pool",
    "stats",
]
