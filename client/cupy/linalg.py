"""``cupy.linalg``: norms and linear solves, computed on the daemon."""

from __future__ import annotations

from typing import Any

import numpy as np

from gpupool.cupy import _remote
from gpupool.cupy._infer import common_device, infer, reduced_shape, stand_in
from gpupool.cupy._ndarray import ndarray
from gpupool.cupy._support import module_getattr, unsupported

__getattr__ = module_getattr(__name__)


def norm(x: ndarray, ord: Any = None, axis: Any = None, keepdims: bool = False) -> ndarray:
    """A vector or matrix norm, as ``numpy.linalg.norm``."""
    if not isinstance(x, ndarray):
        raise TypeError(f"cupy.linalg.norm takes a cupy.ndarray, not {type(x).__name__}")
    options = {key: value for key, value in (("ord", ord), ("axis", axis)) if value is not None}
    dtype = infer(np.linalg.norm, stand_in(x), keepdims=keepdims, **options)
    shape = reduced_shape(x.shape, axis, keepdims)
    with _remote.on_device(x.device_id):
        result = ndarray(shape, dtype)
    if keepdims:
        options["keepdims"] = True
    _remote.enqueue("linalg.norm", x.device_id, (x,), options, (result,))
    return result


def solve(a: ndarray, b: ndarray) -> ndarray:
    """The solution ``x`` of ``a @ x = b`` for a square ``a`` (a singular ``a`` raises
    ``numpy.linalg.LinAlgError`` on the emulator; CuPy on a GPU returns non-finite values)."""
    for each in (a, b):
        if not isinstance(each, ndarray):
            raise TypeError(f"cupy.linalg.solve takes cupy.ndarrays, not {type(each).__name__}")
    if a.ndim != 2 or b.ndim not in (1, 2):
        unsupported("cupy.linalg.solve of stacked matrices")
    if a.shape[0] != a.shape[1]:
        raise np.linalg.LinAlgError("Last 2 dimensions of the array must be square")
    if b.shape[0] != a.shape[0]:
        raise ValueError(
            f"solve: Input operand 1 has a mismatch in its core dimension 0 (size {b.shape[0]}"
            f" is different from {a.shape[0]})"
        )
    device = common_device([a, b])
    dtype = infer(np.linalg.solve, np.ones((1, 1), a.dtype), np.ones((1,) * b.ndim, b.dtype))
    with _remote.on_device(device):
        result = ndarray(b.shape, dtype)
    _remote.enqueue("linalg.solve", device, (a, b), out=(result,))
    return result
