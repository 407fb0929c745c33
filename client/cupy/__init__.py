"""``gpupool.cupy``: CuPy's API over remote devices.

Arrays live on the daemons' devices; operations queue and travel in batches, so a loop of
small operations costs one round trip per synchronizing call. ``gpupool run`` makes a
program's ``import cupy`` load this module. What is not supported raises
``NotImplementedError`` naming the function (see docs/cupy.md), never a wrong answer.
"""

from gpupool.cupy import cuda
from gpupool.cupy._ndarray import array, asarray, asnumpy, empty, ndarray

__all__ = ["array", "asarray", "asnumpy", "cuda", "empty", "ndarray"]
