"""gpupool: remote GPUs that look local.

``gpupool.connect`` names the daemons (or ``GPUPOOL_DAEMONS`` does), ``gpupool.attach`` and
``gpupool.detach`` add and remove GPUs of the pool in a live process; ``gpupool.runtime``
mirrors ``cupy.cuda.runtime``; ``gpupool.Module`` loads CUDA C, PTX or cubin.
"""

__version__ = "0.1.0"

from gpupool.client import connect, disconnect, stats
from gpupool.client.elastic import attach, detach, devices, install_cupy, local_pool
from gpupool.client.module import Function, Module
from gpupool.errors import (
    AllocationError,
    CompileError,
    ConnectionLost,
    CUDARuntimeError,
    GpupoolError,
)

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
    "local_pool",
    "stats",
]
