"""``gpupool.cupy``: CuPy's API over remote devices.

Arrays live on the daemons' devices; operations queue and travel in batches, so a loop of
small operations costs one round trip per synchronizing call. ``gpupool run`` makes a
program's ``import cupy`` load this module. What is not supported raises
``NotImplementedError`` naming the function (see docs/cupy.md), never a wrong answer.
"""

from gpupool.cupy import cuda
from gpupool.cupy._elementwise import ElementwiseKernel
from gpupool.cupy._ndarray import (
    array,
    asarray,
    asnumpy,
    empty,
    ndarray,
)
from gpupool.cupy._raw import (
    RawKernel,
    RawModule,
)
from gpupool.cupy._reduction import ReductionKernel
from gpupool.cupy.cuda.memory import get_default_memory_pool
from gpupool.cupy.cuda.pinned_memory import get_default_pinned_memory_pool

__all__ = [
    "ElementwiseKernel",
    "RawKernel",
    "RawModule",
    "ReductionKernel",
    "array",
    "asarray",
    "asnumpy",
    "cuda",
    "empty",
    "get_default_memory_pool",
    "get_default_pinned_memory_pool",
    "ndarray",
]
