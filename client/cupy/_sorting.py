"""Sorting along an axis, on the daemon: the result has the array's shape (flat for None).
Sorts are stable, as CuPy's are."""

from __future__ import annotations

from typing import Any

import numpy as np

from gpupool.cupy._infer import check_arrays, compute, infer, stand_in
from gpupool.cupy._ndarray import ndarray


def _sorted(name: str, a: ndarray, axis: int | None, kind: Any) -> ndarray:
    check_arrays(name, a)
    if kind not in _KINDS:
        raise ValueError(f"sort kind must be one of {_KINDS[1:]} (got {kind!r})")
    dtype = infer(getattr(np, name), stand_in(a), axis=axis)  # NumPy's errors for the axis
    shape = (a.size,) if axis is None else a.shape
    # always stable: CuPy's sorts are, whatever kind is asked for
    return compute(name, (a,), shape, dtype, {"axis": axis, "kind": "stable"})


_KINDS = (None, "stable", "quicksort", "mergesort", "heapsort")


def sort(a: ndarray, axis: int | None = -1, kind: Any = None) -> ndarray:
    """A sorted copy of ``a``."""
    return _sorted("sort", a, axis, kind)


def argsort(a: ndarray, axis: int | None = -1, kind: Any = None) -> ndarray:
    """The indices that sort ``a``."""
    return _sorted("argsort", a, axis, kind)
