"""``cupy.linalg``: norms and linear solves, computed on the daemon."""

from __future__ import annotations

from typing import Any

import numpy as np

from gpupool.cupy._infer import check_arrays, compute, infer, reduced_shape, stand_in
from gpupool.cupy._ndarray import ndarray
from gpupool.cupy._support import module_getattr, unsupported

__getattr__ = module_getattr(__name__)


def norm(x: ndarray, ord: Any = None, axis: Any = None, keepdims: bool = False) -> ndarray:
    """A vector or matrix norm, as ``numpy.linalg.norm``."""
    check_arrays("linalg.norm", x)
    options = {key: value for key, value in (("ord", ord), ("axis", axis)) if value is not None}
    dtype = infer(np.linalg.norm, stand_in(x), keepdims=keepdims, **options)
    shape = reduced_shape(x.shape, axis, keepdims)
    return compute("linalg.norm", (x,), shape, dtype, {**options, "keepdims": keepdims})


def _square(name: str, a: ndarray) -> None:
    check_arrays(f"linalg.{name}", a)
    if a.ndim < 2:
        raise np.linalg.LinAlgError(
            f"{a.ndim}-dimensional array given. Array must be at least two-dimensional"
        )
    if a.shape[-1] != a.shape[-2]:
        raise np.linalg.LinAlgError("Last 2 dimensions of the array must be square")


def inv(a: ndarray) -> ndarray:
    """The inverse of a square matrix (or of each in a stack)."""
    _square("inv", a)
    return compute("linalg.inv", (a,), a.shape, infer(np.linalg.inv, np.ones((1, 1), a.dtype)))


def det(a: ndarray) -> ndarray:
    """The determinant of a square matrix (or of each in a stack)."""
    _square("det", a)
    dtype = infer(np.linalg.det, np.ones((1, 1), a.dtype))
    return compute("linalg.det", (a,), a.shape[:-2], dtype)


def solve(a: ndarray, b: ndarray) -> ndarray:
    """The solution ``x`` of ``a @ x = b`` for a square ``a`` (a singular ``a`` raises
    ``numpy.linalg.LinAlgError`` on the emulator; CuPy on a GPU returns non-finite values)."""
    check_arrays("linalg.solve", b)
    _square("solve", a)
    if a.ndim != 2 or b.ndim not in (1, 2):
        unsupported("cupy.linalg.solve of stacked matrices")
    if b.shape[0] != a.shape[0]:
        raise ValueError(
            f"solve: Input operand 1 has a mismatch in its core dimension 0 (size {b.shape[0]}"
            f" is different from {a.shape[0]})"
        )
    dtype = infer(np.linalg.solve, np.ones((1, 1), a.dtype), np.ones((1,) * b.ndim, b.dtype))
    return compute("linalg.solve", (a, b), b.shape, dtype)
