"""``gpupool.cupy.cuda``: devices, streams, events and memory, with CuPy's names."""

from gpupool.client import runtime
from gpupool.cupy.cuda import memory

__all__ = ["memory", "runtime"]
