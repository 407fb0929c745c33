"""Order statistics, NaN-ignoring reductions and histograms, computed on the daemon.

Shapes come from the operands' shapes (``gpupool.arrayshapes``, shared with the daemon's
checks), dtypes and NumPy's argument errors from the NumPy function on a stand-in of at most
one element. Only ``bincount`` needs the data for its result's size (one synchronizing call
for its largest value, as CuPy makes).
"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np

from gpupool import arrayshapes
from gpupool.cupy import _remote
from gpupool.cupy._infer import check_arrays, compute, infer, reduced_shape, stand_in
from gpupool.cupy._ndarray import ndarray
from gpupool.cupy._reductions import _reduce
from gpupool.cupy._support import unsupported


def nansum(
    a: Any, axis: Any = None, dtype: Any = None, out: Any = None, keepdims: bool = False
) -> ndarray:
    return _reduce("nansum", a, axis, out, keepdims, dtype)


def nanprod(
    a: Any, axis: Any = None, dtype: Any = None, out: Any = None, keepdims: bool = False
) -> ndarray:
    return _reduce("nanprod", a, axis, out, keepdims, dtype)


def nanmean(
    a: Any, axis: Any = None, dtype: Any = None, out: Any = None, keepdims: bool = False
) -> ndarray:
    return _reduce("nanmean", a, axis, out, keepdims, dtype)


def nanvar(
    a: Any,
    axis: Any = None,
    dtype: Any = None,
    out: Any = None,
    ddof: int = 0,
    keepdims: bool = False,
) -> ndarray:
    return _reduce("nanvar", a, axis, out, keepdims, dtype, ddof=ddof or None)


def nanstd(
    a: Any,
    axis: Any = None,
    dtype: Any = None,
    out: Any = None,
    ddof: int = 0,
    keepdims: bool = False,
) -> ndarray:
    return _reduce("nanstd", a, axis, out, keepdims, dtype, ddof=ddof or None)


def nanmin(a: Any, axis: Any = None, out: Any = None, keepdims: bool = False) -> ndarray:
    return _reduce("nanmin", a, axis, out, keepdims)


def nanmax(a: Any, axis: Any = None, out: Any = None, keepdims: bool = False) -> ndarray:
    return _reduce("nanmax", a, axis, out, keepdims)


def _nan_arg(name: str, a: Any, axis: Any, out: Any, keepdims: bool) -> ndarray:
    check_arrays(name, a)
    if a.size == 0:
        raise ValueError(f"attempt to get {name[3:]} of an empty sequence")
    shape = reduced_shape(a.shape, axis, keepdims)
    return compute(name, (a,), shape, np.dtype(np.intp), {"axis": axis, "keepdims": keepdims}, out)


def nanargmin(a: Any, axis: Any = None, out: Any = None, keepdims: bool = False) -> ndarray:
    return _nan_arg("nanargmin", a, axis, out, keepdims)


def nanargmax(a: Any, axis: Any = None, out: Any = None, keepdims: bool = False) -> ndarray:
    return _nan_arg("nanargmax", a, axis, out, keepdims)


def _scan(name: str, a: Any, axis: Any, dtype: Any, out: Any, **extra: Any) -> ndarray:
    check_arrays(name, a)
    dtype = None if dtype is None else np.dtype(dtype)
    result_dtype = infer(getattr(np, name), stand_in(a), axis=axis, dtype=dtype, **extra)
    shape = (a.size,) if axis is None else a.shape
    if extra.get("include_initial"):
        index = 0 if axis is None else operator.index(axis) % max(a.ndim, 1)
        shape = tuple(n + 1 if i == index else n for i, n in enumerate(shape))
    options = {"axis": axis, "dtype": dtype, **extra}
    return compute(name, (a,), shape, result_dtype, options, out)


def nancumsum(a: Any, axis: Any = None, dtype: Any = None, out: Any = None) -> ndarray:
    return _scan("nancumsum", a, axis, dtype, out)


def nancumprod(a: Any, axis: Any = None, dtype: Any = None, out: Any = None) -> ndarray:
    return _scan("nancumprod", a, axis, dtype, out)


def _cumulative(
    name: str, x: Any, axis: Any, dtype: Any, out: Any, include_initial: bool
) -> ndarray:
    check_arrays(name, x)
    if x.ndim == 0:
        raise ValueError("0-d array: cumulative functions need at least one dimension")
    if axis is None:
        if x.ndim > 1:
            raise ValueError(
                "For arrays which have more than one dimension ``axis`` argument is required."
            )
        axis = 0
    extra = {"include_initial": True} if include_initial else {}
    return _scan(name, x, axis, dtype, out, **extra)


def cumulative_sum(
    x: Any,
    /,
    *,
    axis: Any = None,
    dtype: Any = None,
    out: Any = None,
    include_initial: bool = False,
) -> ndarray:
    return _cumulative("cumulative_sum", x, axis, dtype, out, include_initial)


def cumulative_prod(
    x: Any,
    /,
    *,
    axis: Any = None,
    dtype: Any = None,
    out: Any = None,
    include_initial: bool = False,
) -> ndarray:
    return _cumulative("cumulative_prod", x, axis, dtype, out, include_initial)


def ptp(a: Any, axis: Any = None, out: Any = None, keepdims: bool = False) -> ndarray:
    """The range (maximum minus minimum) along ``axis``."""
    check_arrays("ptp", a)
    dtype = infer(np.ptp, stand_in(a), axis=axis, keepdims=keepdims)
    shape = reduced_shape(a.shape, axis, keepdims)
    return compute("ptp", (a,), shape, dtype, {"axis": axis, "keepdims": keepdims}, out)


# quantiles


def _q_operand(q: Any, device: int) -> Any:
    """``q`` as the daemon takes it: a device array, or a Python/NumPy scalar."""
    if isinstance(q, ndarray):
        return q
    values = np.asarray(q)
    if values.ndim == 0:
        return values[()]
    from gpupool.cupy._creation import asarray

    with _remote.on_device(device):
        return asarray(values)


def _quantile(
    name: str,
    a: Any,
    q: Any,
    axis: Any,
    out: Any,
    method: str,
    keepdims: bool,
    overwrite_input: bool = False,
) -> ndarray:
    check_arrays(name, a)
    if method not in arrayshapes.QUANTILE_METHODS:
        raise ValueError(
            f"'{method}' is not a valid method. Use one of: {sorted(arrayshapes.QUANTILE_METHODS)}"
        )
    q = _q_operand(q, a.device_id)
    q_shape = tuple(getattr(q, "shape", ()))
    # NumPy checks q's range on its values; a device array's are checked on the daemon
    q_stand_in = (
        np.full((1,) * q.ndim, 0.5 if "quantile" in name else 50.0, q.dtype)
        if isinstance(q, ndarray)
        else q
    )
    sample = np.ones(tuple(min(n, 1) or 1 for n in a.shape), a.dtype)
    dtype = infer(getattr(np, name), sample, q_stand_in, axis=axis, method=method)
    shape = arrayshapes.quantile_shape(a.shape, q_shape, axis, keepdims)
    options = {"axis": axis, "method": method, "keepdims": keepdims}
    return compute(name, (a, q), shape, dtype, options, out)


def _quantile_function(name: str) -> Any:
    def function(
        a: Any,
        q: Any,
        axis: Any = None,
        out: Any = None,
        overwrite_input: bool = False,
        method: str = "linear",
        keepdims: bool = False,
        *,
        interpolation: str | None = None,
    ) -> ndarray:
        return _quantile(name, a, q, axis, out, interpolation or method, keepdims)

    function.__name__ = function.__qualname__ = name
    function.__doc__ = f"``numpy.{name}``'s result, computed on the daemon."
    return function


quantile = _quantile_function("quantile")
percentile = _quantile_function("percentile")
nanquantile = _quantile_function("nanquantile")
nanpercentile = _quantile_function("nanpercentile")


def _median(name: str, a: Any, axis: Any, out: Any, keepdims: bool) -> ndarray:
    check_arrays(name, a)
    sample = np.ones(tuple(min(n, 1) or 1 for n in a.shape), a.dtype)
    dtype = infer(getattr(np, name), sample, axis=axis)
    shape = reduced_shape(a.shape, axis, keepdims)
    return compute(name, (a,), shape, dtype, {"axis": axis, "keepdims": keepdims}, out)


def median(
    a: Any, axis: Any = None, out: Any = None, overwrite_input: bool = False, keepdims: bool = False
) -> ndarray:
    return _median("median", a, axis, out, keepdims)


def nanmedian(
    a: Any, axis: Any = None, out: Any = None, overwrite_input: bool = False, keepdims: bool = False
) -> ndarray:
    return _median("nanmedian", a, axis, out, keepdims)


# histograms


def bincount(x: Any, weights: Any = None, minlength: int = 0) -> ndarray:
    """Counts of each non-negative integer (its length is the largest value plus one: one
    synchronizing call, as in CuPy)."""
    check_arrays("bincount", x)
    if x.ndim != 1:
        raise ValueError("object too deep for desired array")
    if x.dtype.kind not in "biu":
        raise TypeError(f"x must be int array, not {x.dtype}")
    minlength = operator.index(minlength)
    if minlength < 0:
        raise ValueError("minlength must be non-negative")
    if weights is not None:
        check_arrays("bincount", weights)
        if weights.shape != x.shape:
            raise ValueError("The weights and list don't have the same length.")
    if x.size:
        if int(x.min()) < 0:
            raise ValueError("The first argument of bincount must be non-negative")
        length = max(int(x.max()) + 1, minlength)
    else:
        length = minlength
    dtype = np.dtype(np.intp) if weights is None else np.result_type(weights.dtype, np.float64)
    operands = (x,) if weights is None else (x, weights)
    return compute("bincount", operands, (length,), dtype, {"minlength": length})


def histogram(
    x: Any, bins: Any = 10, range: Any = None, weights: Any = None, density: bool = False
) -> tuple[ndarray, ndarray]:
    """Counts in ``bins`` (a number of equal bins, or their edges as a device array)."""
    check_arrays("histogram", x)
    if isinstance(bins, ndarray):
        if bins.ndim != 1 or bins.size < 1:
            raise ValueError("bins must be 1d, non-empty")
        edges_count = bins.size
    elif isinstance(bins, str):
        unsupported(f"cupy.histogram with bins={bins!r}")
    else:
        bins = operator.index(bins)
        if bins < 1:
            raise ValueError("`bins` must be positive, when an integer")
        edges_count = bins + 1
    if range is not None:
        low, high = (float(bound) for bound in range)
        if low > high:
            raise ValueError("max must be larger than min in range parameter.")
        range = (low, high)
    if weights is not None:
        check_arrays("histogram", weights)
    counts_dtype = (
        np.dtype(np.float64) if density else np.dtype(np.intp) if weights is None else weights.dtype
    )
    edges_dtype = np.result_type(x.dtype, np.float64) if x.dtype.kind in "biu" else x.dtype
    if isinstance(bins, ndarray):
        edges_dtype = bins.dtype
    options = {"bins": bins, "range": range, "weights": weights, "density": density}
    options = {key: value for key, value in options.items() if value is not None}
    from gpupool.cupy._infer import result_array

    counts = result_array("histogram", x.device_id, (edges_count - 1,), counts_dtype)
    edges = result_array("histogram", x.device_id, (edges_count,), edges_dtype)
    _remote.enqueue("histogram", x.device_id, (x,), options, (counts, edges))
    return counts, edges


def digitize(x: Any, bins: Any, right: bool = False) -> ndarray:
    """The index of the bin each value falls in."""
    check_arrays("digitize", x, bins)
    if bins.ndim != 1:
        raise ValueError("object too deep for desired array")
    return compute("digitize", (x, bins), x.shape, np.dtype(np.intp), {"right": right})
