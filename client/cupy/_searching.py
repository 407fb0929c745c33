"""Searching, partitions, and the functions whose result's size depends on the data.

``nonzero``, ``unique`` and the set routines cost one synchronizing call for their result's
size (CuPy synchronizes there too): the daemon counts (``size.NAME`` into a 0-d array, or
``count_nonzero``), the client allocates the result, and the function writes it.
"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np

from gpupool.cupy import _remote
from gpupool.cupy._infer import check_arrays, common_device, compute, result_array
from gpupool.cupy._ndarray import ndarray
from gpupool.cupy._reductions import count_nonzero


def _device_operand(value: Any, device: int) -> Any:
    """A device array, or a scalar, for an operand CuPy takes as either."""
    if isinstance(value, ndarray) or np.ndim(value) == 0:
        return value
    from gpupool.cupy._creation import asarray

    with _remote.on_device(device):
        return asarray(value)


def searchsorted(a: Any, v: Any, side: str = "left", sorter: Any = None) -> ndarray:
    """Indices where ``v``'s elements would be inserted into the sorted ``a``."""
    check_arrays("searchsorted", a)
    if a.ndim != 1:
        raise ValueError("object too deep for desired array")
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right' (got {side!r})")
    v = _device_operand(v, a.device_id)
    operands: tuple[Any, ...] = (a, v)
    options: dict[str, Any] = {"side": side}
    if sorter is not None:
        check_arrays("searchsorted", sorter)
        if sorter.shape != a.shape:
            raise ValueError("sorter.size must equal a.size")
        options["sorter"] = sorter
    shape = tuple(getattr(v, "shape", ()))
    return compute("searchsorted", operands, shape, np.dtype(np.intp), options)


def isin(
    element: Any,
    test_elements: Any,
    assume_unique: bool = False,
    invert: bool = False,
    *,
    kind: Any = None,
) -> ndarray:
    """A boolean array of ``element``'s shape: which elements are in ``test_elements``."""
    check_arrays("isin", element)
    test = _device_operand(test_elements, element.device_id)
    options = {"assume_unique": assume_unique, "invert": invert}
    return compute("isin", (element, test), element.shape, np.dtype(np.bool_), options)


def _partition(name: str, a: Any, kth: Any, axis: Any) -> ndarray:
    check_arrays(name, a)
    kth_values = np.atleast_1d(np.asarray(kth))
    if kth_values.dtype.kind not in "iu" or kth_values.ndim > 1:
        raise TypeError("Partition index must be integer")
    if axis is None:
        a = a.ravel()
        axis = -1
    length = a.shape[operator.index(axis)] if a.ndim else 0
    if a.ndim == 0:
        raise ValueError("Cannot partition a 0-d array")
    for k in kth_values:
        if not -length <= k < length:
            raise ValueError(f"kth(={k}) out of bounds ({length})")
    kth_operand = int(kth_values[0]) if np.ndim(kth) == 0 else tuple(map(int, kth_values))
    dtype = a.dtype if name == "partition" else np.dtype(np.intp)
    return compute(name, (a,), a.shape, dtype, {"kth": kth_operand, "axis": axis})


def partition(a: Any, kth: Any, axis: Any = -1) -> ndarray:
    return _partition("partition", a, kth, axis)


def argpartition(a: Any, kth: Any, axis: Any = -1) -> ndarray:
    return _partition("argpartition", a, kth, axis)


def nonzero(a: Any) -> tuple[ndarray, ...]:
    """The indices of the non-zero elements, one array a dimension (0-d arrays refused, as in
    NumPy 2)."""
    check_arrays("nonzero", a)
    if a.ndim == 0:
        raise ValueError(
            "Calling nonzero on 0d arrays is not allowed. Use np.atleast_1d(scalar).nonzero()"
            " instead."
        )
    count = int(count_nonzero(a))  # a synchronizing call, as in CuPy
    outs = tuple(
        result_array("nonzero", a.device_id, (count,), np.dtype(np.intp)) for _ in range(a.ndim)
    )
    _remote.enqueue("nonzero", a.device_id, (a,), None, outs)
    return outs


def flatnonzero(a: Any) -> ndarray:
    return nonzero(a.ravel())[0]


def argwhere(a: Any) -> ndarray:
    """The indices of the non-zero elements, one row each."""
    check_arrays("argwhere", a)
    if a.ndim == 0:  # (1, 0) or (0, 0), as NumPy's
        return _stack_columns(nonzero(a.reshape(1)))[:, :0]
    return _stack_columns(nonzero(a))


def _stack_columns(columns: tuple[ndarray, ...]) -> ndarray:
    from gpupool.cupy._manipulation import stack

    return stack(columns, axis=1)


def _data_sized(name: str, operands: tuple[Any, ...], options: dict[str, Any]) -> int:
    """How many elements (rows, along an axis) the data-sized function gives: one round trip."""
    device = common_device([each for each in operands if isinstance(each, ndarray)])
    size = result_array(f"size.{name}", device, (), np.dtype(np.intp))
    _remote.enqueue(f"size.{name}", device, operands, options, (size,))
    return int(size)


def unique(
    ar: Any,
    return_index: bool = False,
    return_inverse: bool = False,
    return_counts: bool = False,
    axis: Any = None,
    *,
    equal_nan: bool = True,
) -> Any:
    """The sorted unique elements (rows, with ``axis``), and optionally where they are first
    found, how to rebuild ``ar`` from them, and how often each is there."""
    check_arrays("unique", ar)
    options: dict[str, Any] = {"equal_nan": equal_nan}
    if axis is not None:
        axis = operator.index(axis)
        if not -ar.ndim <= axis < ar.ndim:
            raise np.exceptions.AxisError(axis, ar.ndim)
        axis %= ar.ndim
        options["axis"] = axis
    count = _data_sized("unique", (ar,), options)
    device = ar.device_id
    values_shape = (
        (count,)
        if axis is None
        else tuple(count if i == axis else n for i, n in enumerate(ar.shape))
    )
    outs = [result_array("unique", device, values_shape, ar.dtype)]
    flags = {
        "return_index": return_index,
        "return_inverse": return_inverse,
        "return_counts": return_counts,
    }
    if return_index:
        outs.append(result_array("unique", device, (count,), np.dtype(np.intp)))
    if return_inverse:
        inverse_shape = ar.shape if axis is None else (ar.shape[axis],)
        outs.append(result_array("unique", device, inverse_shape, np.dtype(np.intp)))
    if return_counts:
        outs.append(result_array("unique", device, (count,), np.dtype(np.intp)))
    options.update({key: True for key, value in flags.items() if value})
    _remote.enqueue("unique", device, (ar,), options, tuple(outs))
    return outs[0] if len(outs) == 1 else tuple(outs)


def _set_routine(name: str, ar1: Any, ar2: Any, options: dict[str, Any]) -> ndarray:
    check_arrays(name, ar1, ar2)
    count = _data_sized(name, (ar1, ar2), options)
    dtype = np.result_type(ar1.dtype, ar2.dtype)
    return compute(name, (ar1, ar2), (count,), dtype, options)


def union1d(ar1: Any, ar2: Any) -> ndarray:
    return _set_routine("union1d", ar1, ar2, {})


def intersect1d(ar1: Any, ar2: Any, assume_unique: bool = False) -> ndarray:
    return _set_routine("intersect1d", ar1, ar2, {"assume_unique": assume_unique})


def setdiff1d(ar1: Any, ar2: Any, assume_unique: bool = False) -> ndarray:
    return _set_routine("setdiff1d", ar1, ar2, {"assume_unique": assume_unique})


def setxor1d(ar1: Any, ar2: Any, assume_unique: bool = False) -> ndarray:
    return _set_routine("setxor1d", ar1, ar2, {"assume_unique": assume_unique})
