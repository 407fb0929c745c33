"""Each result's shape and dtype, worked out on the client with NumPy's own rules.

A result is allocated before its operation is queued, so its shape and dtype must be known
without the data. Dtypes come from calling the NumPy function on stand-ins that cost nothing
to compute: empty arrays for elementwise functions (Python scalars stay Python scalars, so
NumPy's weak scalar typing applies), at most one element for reductions and products. Errors
NumPy raises for the arguments (a bad axis, an impossible cast) are raised right here, with
NumPy's types. Shapes follow from ``np.broadcast_shapes`` and the axes.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from numpy.lib.array_utils import normalize_axis_tuple

from gpupool.client import runtime
from gpupool.cupy import _remote
from gpupool.cupy._ndarray import ndarray

SCALARS = (bool, int, float, complex, np.generic)


def meta(value: Any) -> Any:
    """An operand's empty stand-in, for an elementwise function's dtype."""
    if isinstance(value, ndarray):
        return np.empty(0, value.dtype)
    if value is None or isinstance(value, SCALARS):
        return value
    raise TypeError(f"Unsupported type {type(value)}")


def meta_key(value: Any) -> Any:
    """What an operand's stand-in depends on: its dtype, or its Python type; for a Python int
    also its sign and size, since whether it fits a dtype (else OverflowError) depends on them."""
    if type(value) is ndarray:
        return value._dtype
    if isinstance(value, ndarray | np.generic):
        return value.dtype
    if isinstance(value, int) and not isinstance(value, bool):
        return int, value < 0, (~value if value < 0 else value).bit_length()
    return type(value)


def broadcast_shape(arrays: Sequence[ndarray]) -> tuple[int, ...]:
    """``np.broadcast_shapes`` of the arrays' shapes (a shortcut when they are all one shape)."""
    shapes = {array.shape for array in arrays}
    if len(shapes) == 1:
        return shapes.pop()
    return np.broadcast_shapes(*shapes)


def stand_in(array: ndarray) -> np.ndarray:
    """Zeros with ``array``'s dtype and dimensions, each dimension 0 or 1 long."""
    return np.zeros(tuple(min(n, 1) for n in array.shape), array.dtype)


def infer(numpy_function: Callable[..., Any], *args: Any, **kwargs: Any) -> np.dtype:
    """The dtype NumPy's function gives for these stand-ins (raising what NumPy raises)."""
    with warnings.catch_warnings(action="ignore"), np.errstate(all="ignore"):
        # "mean of empty slice", "degrees of freedom <= 0": about stand-ins, not the data
        return np.asarray(numpy_function(*args, **kwargs)).dtype


def reduced_shape(shape: tuple[int, ...], axis: Any, keepdims: bool) -> tuple[int, ...]:
    """The shape left after reducing ``axis`` (all axes for None)."""
    axes = range(len(shape)) if axis is None else normalize_axis_tuple(axis, len(shape))
    return tuple(1 if i in axes else n for i, n in enumerate(shape) if keepdims or i not in axes)


def check_arrays(function: str, *values: Any) -> None:
    """TypeError unless every value is a device array (CuPy takes no host arrays here)."""
    for value in values:
        if not isinstance(value, ndarray):
            raise TypeError(f"cupy.{function} takes cupy.ndarrays, not {type(value).__name__}")


def common_device(arrays: Sequence[ndarray]) -> int:
    """The one device all ``arrays`` are on (the current device when there are none)."""
    devices = {array.device_id for array in arrays}
    if len(devices) > 1:
        raise ValueError(
            f"arrays on devices {sorted(devices)}: an operation needs all its arrays on one"
            " device (copy one over with x.copy() or cupy.array(x) under the other's device)"
        )
    return devices.pop() if devices else runtime.getDevice()


def output_arrays(out: Any) -> tuple[ndarray, ...]:
    """``out=`` as a tuple of device arrays (NumPy passes a tuple, users often one array)."""
    outs = () if out is None else out if isinstance(out, tuple) else (out,)
    check_arrays("out", *outs)
    return outs


def result_array(
    name: str, device: int, shape: tuple[int, ...], dtype: np.dtype, out: Any = None
) -> ndarray:
    """``out`` when given (its shape, and NumPy's same-kind cast into it, checked), else a new
    array of ``shape`` and ``dtype`` on ``device``."""
    outs = output_arrays(out)
    if not outs:
        with _remote.on_device(device):
            return ndarray._result(tuple(shape), np.dtype(dtype))
    (result,) = outs
    if result.shape != shape:
        raise ValueError(f"output array has shape {result.shape}, {name} gives {shape}")
    if not np.can_cast(dtype, result.dtype, "same_kind"):
        raise TypeError(
            f"Cannot cast {name} output from {dtype!r} to {result.dtype!r} with casting"
            " rule 'same_kind'"
        )
    return result


def compute(
    name: str,
    operands: Sequence[Any],
    shape: tuple[int, ...],
    dtype: np.dtype,
    kwargs: dict[str, Any] | None = None,
    out: Any = None,
) -> ndarray:
    """Queue ``name(*operands, **kwargs)`` on the operands' device; its one result, written
    into :func:`result_array`."""
    arrays = [op for op in operands if isinstance(op, ndarray)]
    device = common_device([*arrays, *output_arrays(out)])
    result = result_array(name, device, shape, dtype, out)
    _remote.enqueue(name, device, operands, kwargs, (result,))
    return result
