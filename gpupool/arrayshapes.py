"""Result shapes of array functions, from their operands' shapes and arguments alone.

Both ends need them: the client allocates each result before the operation is queued (so it
must know the shape without the data), and the daemon checks a result will fit its outputs
*before* computing it (a client may send any shape, and a function whose result can dwarf its
operands would otherwise build it first). One definition serves both, so they cannot drift.
Errors are NumPy's types and messages where NumPy gives one.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Sequence
from typing import Any

from numpy.lib.array_utils import normalize_axis_index, normalize_axis_tuple

Shape = tuple[int, ...]

# The ``method=`` of quantile and percentile: NumPy's names, which CuPy takes too.
QUANTILE_METHODS = frozenset(
    {
        "inverted_cdf",
        "averaged_inverted_cdf",
        "closest_observation",
        "interpolated_inverted_cdf",
        "hazen",
        "weibull",
        "linear",
        "median_unbiased",
        "normal_unbiased",
        "lower",
        "higher",
        "midpoint",
        "nearest",
    }
)

_SUBSCRIPTS = re.compile(r"[A-Za-z,. ]*(->[A-Za-z. ]*)?")
MAX_SUBSCRIPTS = 256


def array_extent(
    ptr: int, shape: Sequence[int], strides: Sequence[int], itemsize: int
) -> tuple[int, int]:
    """The bytes ``[low, high)`` a strided view touches (empty for an empty view)."""
    if 0 in shape:
        return ptr, ptr
    low = ptr + sum((n - 1) * s for n, s in zip(shape, strides, strict=True) if s < 0)
    high = ptr + sum((n - 1) * s for n, s in zip(shape, strides, strict=True) if s > 0)
    return low, high + itemsize


def einsum_shape(subscripts: str, shapes: Sequence[Shape]) -> Shape:
    """The shape ``numpy.einsum(subscripts, *operands)`` gives (explicit or implicit output,
    ``...`` broadcasting); ValueError for subscripts that do not match the operands."""
    if len(subscripts) > MAX_SUBSCRIPTS or not _SUBSCRIPTS.fullmatch(subscripts):
        raise ValueError(f"invalid einsum subscripts {subscripts[:40]!r}")
    text = subscripts.replace(" ", "")
    inputs, arrow, output = text.partition("->")
    terms = inputs.split(",")
    if len(terms) != len(shapes):
        raise ValueError("more operands provided to einstein sum function than specified")
    sizes: dict[str, int] = {}
    counts: dict[str, int] = {}
    ellipsis_shapes: list[Shape] = []
    for term, shape in zip(terms, shapes, strict=True):
        if term.count("...") > 1 or term.replace("...", "").count(".") > 0:
            raise ValueError(f"invalid einsum subscripts {subscripts[:40]!r}")
        letters = term.replace("...", "")
        if "..." in term:
            extra = len(shape) - len(letters)
            if extra < 0:
                raise ValueError("einstein sum subscripts string contains too many subscripts")
            at = term.index("...")
            ellipsis_shapes.append(tuple(shape[at : at + extra]))
            shape = tuple(shape[:at]) + tuple(shape[at + extra :])
        elif len(letters) != len(shape):
            raise ValueError(
                "operand has more dimensions than subscripts given in einstein sum, but no"
                " '...' ellipsis provided to broadcast the extra dimensions."
            )
        for letter, size in zip(letters, shape, strict=True):
            counts[letter] = counts.get(letter, 0) + 1
            known = sizes.get(letter, 1)
            if size != known and known != 1 and size != 1:
                raise ValueError(
                    f"operands could not be broadcast together with remapped shapes for"
                    f" subscript {letter!r}"
                )
            sizes[letter] = max(known, size) if size != 0 and known != 0 else 0
    broadcast = _broadcast(ellipsis_shapes)
    if not arrow:
        output = ("..." if ellipsis_shapes else "") + "".join(
            sorted(letter for letter, count in counts.items() if count == 1)
        )
    result: list[int] = []
    rest = output
    if rest.count("...") > 1 or rest.replace("...", "").count(".") > 0:
        raise ValueError(f"invalid einsum subscripts {subscripts[:40]!r}")
    for part in re.split(r"(\.\.\.)", rest):
        if part == "...":
            result.extend(broadcast)
            continue
        for letter in part:
            if letter not in sizes:
                raise ValueError(
                    f"einstein sum subscripts string included output subscript {letter!r}"
                    " which never appeared in an input"
                )
            if part.count(letter) > 1 or output.count(letter) > 1:
                raise ValueError(
                    f"einstein sum subscripts string includes output subscript {letter!r}"
                    " multiple times"
                )
            result.append(sizes[letter])
    return tuple(result)


def _broadcast(shapes: Sequence[Shape]) -> Shape:
    import numpy as np

    return tuple(np.broadcast_shapes(*shapes)) if shapes else ()


def tensordot_shape(a: Shape, b: Shape, axes: Any) -> Shape:
    """The shape ``numpy.tensordot(a, b, axes)`` gives."""
    if isinstance(axes, int):
        if axes < 0 or axes > min(len(a), len(b)):
            raise ValueError("shape-mismatch for sum")
        a_axes, b_axes = list(range(len(a) - axes, len(a))), list(range(axes))
    else:
        a_axes, b_axes = (list(each) if isinstance(each, Sequence) else [each] for each in axes)
    if len(a_axes) != len(b_axes):
        raise ValueError("shape-mismatch for sum")
    a_axes = [normalize_axis_index(operator.index(axis), len(a)) for axis in a_axes]
    b_axes = [normalize_axis_index(operator.index(axis), len(b)) for axis in b_axes]
    if any(a[i] != b[j] for i, j in zip(a_axes, b_axes, strict=True)):
        raise ValueError("shape-mismatch for sum")
    return tuple(n for i, n in enumerate(a) if i not in a_axes) + tuple(
        n for j, n in enumerate(b) if j not in b_axes
    )


def kron_shape(a: Shape, b: Shape) -> Shape:
    ndim = max(len(a), len(b))
    a = (1,) * (ndim - len(a)) + tuple(a)
    b = (1,) * (ndim - len(b)) + tuple(b)
    return tuple(x * y for x, y in zip(a, b, strict=True))


def reduced(shape: Shape, axis: Any, keepdims: bool) -> Shape:
    """The shape left after reducing ``axis`` (all axes for None)."""
    axes = range(len(shape)) if axis is None else normalize_axis_tuple(axis, len(shape))
    return tuple(1 if i in axes else n for i, n in enumerate(shape) if keepdims or i not in axes)


def quantile_shape(a: Shape, q: Shape, axis: Any, keepdims: bool) -> Shape:
    """``quantile``/``percentile``/``median``: q's dimensions first, then what is left of
    ``a``."""
    return tuple(q) + reduced(a, axis, keepdims)


def fft_shape(name: str, shape: Shape, n: Any, axis: Any, s: Any, axes: Any) -> Shape:
    """The shape an ``fft`` function gives: the lengths along its axes replaced by ``n`` (or
    ``s``), real transforms halving or restoring the last one."""
    ndim = len(shape)
    one = name in ("fft", "ifft", "rfft", "irfft", "hfft", "ihfft")
    if one:
        axes_list = [normalize_axis_index(-1 if axis is None else int(axis), ndim)]
        lengths: list[int | None] = [None if n is None else operator.index(n)]
    else:
        if axes is None:
            count = len(s) if s is not None else (2 if name.endswith("2") else ndim)
            axes_list = list(range(ndim - count, ndim))
        else:
            axes_list = [normalize_axis_index(int(x), ndim) for x in axes]
        if s is not None and len(s) != len(axes_list):
            raise ValueError("Shape and axes have different lengths.")
        lengths = [None] * len(axes_list) if s is None else [operator.index(x) for x in s]
    result = list(shape)
    inverse_real = name.startswith("irfft") or name == "hfft"
    for index, (ax, length) in enumerate(zip(axes_list, lengths, strict=True)):
        last = index == len(axes_list) - 1
        if length is not None and length < 1:
            raise ValueError(f"Invalid number of FFT data points ({length}) specified.")
        if last and inverse_real:
            result[ax] = length if length is not None else 2 * (shape[ax] - 1)
        else:
            result[ax] = length if length is not None else shape[ax]
        if last and (name.startswith("rfft") or name == "ihfft"):
            result[ax] = result[ax] // 2 + 1
    if inverse_real and result[axes_list[-1]] < 1:
        raise ValueError(f"Invalid number of FFT data points ({result[axes_list[-1]]}) specified.")
    return tuple(result)


def svd_shapes(shape: Shape, full_matrices: bool) -> tuple[Shape, Shape, Shape]:
    *stack, m, n = shape
    k = min(m, n)
    batch = tuple(stack)
    if full_matrices:
        return (*batch, m, m), (*batch, k), (*batch, n, n)
    return (*batch, m, k), (*batch, k), (*batch, k, n)


def qr_shapes(shape: Shape, mode: str) -> tuple[Shape, ...]:
    *stack, m, n = shape
    k = min(m, n)
    batch = tuple(stack)
    if mode == "complete":
        return (*batch, m, m), (*batch, m, n)
    if mode == "r":
        return ((*batch, k, n),)
    return (*batch, m, k), (*batch, k, n)


def size(shape: Shape) -> int:
    return math.prod(shape)
