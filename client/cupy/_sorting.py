"""Sorting along an axis, on the daemon: the result has the array's shape (flat for None)."""

from __future__ import annotations

from typing import Any

import numpy as np

from gpupool.cupy._infer import check_arrays, compute, infer, stand_in
from gpupool.cupy._ndarray import ndarray


def _sorted(name: str, a: ndarray, axis: int | None) -> ndarray:
    check_arrays(name, a)
    dtype = infer(getattr(np, name), stand_in(a), axis=axis)  # NumPy's errors for the axis
    shape = (a.size,) if axis is None else a.shape
    return compute(name, (a,), shape, dtype, {"axis": axis})


def sort(a: ndarray, axis: int | None = -1, kind: Any = None) -> ndarray:
    """A sorted copy of ``a``."""
    return _sorted("sort", a, axis)


def argsort(a: ndarray, axis: int | None = -1, kind: Any = None) -> ndarray:
    """The indices that sort ``a``."""
    return _sorted("argsort", a, axis)
