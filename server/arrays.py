"""Array operations: a whitelisted function applied to views of the session's own memory.

The client names a function from the table below and sends its operands as data (array
descriptors, numbers, slices, dtypes); nothing it sends is ever evaluated, unpickled or looked
up as an attribute. Every descriptor's bytes are checked against the session's allocations
before the backend makes a view of them, and only numeric dtypes are accepted, so no view can
reach memory the session does not own. The same table runs on NumPy (the emulator) and on
CuPy (a GPU): the backend says which module provides the functions.

A program passes the same arrays to operation after operation, so a view, once checked, is
kept by its descriptor's bytes, and an operation's decoded operands by the operation's bytes
(:class:`ByAllocation`), until an allocation they reach is freed: a repeated operation costs
a dictionary lookup, not its checks and new views. Only what passed every check is kept.

Errors an array function raises for its arguments (a bad index, a singular matrix) go back as
their Python type (``ArrayFunctionError``), reported at the client's next synchronizing call
like any asynchronous error.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from types import ModuleType
from typing import Any

import numpy as np

from gpupool import arrayshapes
from gpupool.arrayshapes import array_extent
from gpupool.errors import ArrayFunctionError, CUDARuntimeError
from gpupool.logs import fields
from gpupool.proto import gpupool_pb2 as pb
from gpupool.proto.scalars import from_scalar
from gpupool.server.allocations import AllocationTable
from gpupool.server.backends.base import Backend

log = logging.getLogger(__name__)

# A function of the table: (positional operands, keyword operands, output arrays).
Function = Callable[[list[Any], dict[str, Any], list[Any]], None]

# Elementwise functions: called with their outputs as trailing positional arguments (NumPy's and
# CuPy's ufuncs both take them so), which writes the result in place.
UFUNCS = (
    "absolute",
    "add",
    "arccos",
    "arccosh",
    "arcsin",
    "arcsinh",
    "arctan",
    "arctan2",
    "arctanh",
    "bitwise_and",
    "bitwise_or",
    "bitwise_xor",
    "cbrt",
    "ceil",
    "conjugate",
    "copysign",
    "cos",
    "cosh",
    "deg2rad",
    "divide",
    "divmod",
    "equal",
    "exp",
    "exp2",
    "expm1",
    "fabs",
    "float_power",
    "floor",
    "floor_divide",
    "fmax",
    "fmin",
    "fmod",
    "frexp",
    "gcd",
    "greater",
    "greater_equal",
    "heaviside",
    "hypot",
    "invert",
    "isfinite",
    "isinf",
    "isnan",
    "lcm",
    "ldexp",
    "left_shift",
    "less",
    "less_equal",
    "log",
    "log10",
    "log1p",
    "log2",
    "logaddexp",
    "logaddexp2",
    "logical_and",
    "logical_not",
    "logical_or",
    "logical_xor",
    "maximum",
    "minimum",
    "modf",
    "multiply",
    "negative",
    "nextafter",
    "not_equal",
    "positive",
    "power",
    "rad2deg",
    "reciprocal",
    "remainder",
    "right_shift",
    "rint",
    "sign",
    "signbit",
    "sin",
    "sinh",
    "sqrt",
    "square",
    "subtract",
    "tan",
    "tanh",
    "true_divide",
    "trunc",
)

# Functions whose result is copied into the output (reductions, linear algebra, joins).
RETURNING = (
    "all",
    "amax",
    "amin",
    "any",
    "argmax",
    "argmin",
    "argpartition",
    "argsort",
    "around",
    "bincount",
    "clip",
    "convolve",
    "correlate",
    "count_nonzero",
    "cross",
    "cumprod",
    "cumsum",
    "cumulative_prod",
    "cumulative_sum",
    "diag",
    "diagflat",
    "diff",
    "digitize",
    "dot",
    "gradient",
    "histogram",
    "inner",
    "interp",
    "intersect1d",
    "isclose",
    "isin",
    "kron",
    "matmul",
    "mean",
    "median",
    "nan_to_num",
    "nanargmax",
    "nanargmin",
    "nancumprod",
    "nancumsum",
    "nanmax",
    "nanmean",
    "nanmedian",
    "nanmin",
    "nanpercentile",
    "nanprod",
    "nanquantile",
    "nanstd",
    "nansum",
    "nanvar",
    "nonzero",
    "outer",
    "partition",
    "percentile",
    "prod",
    "ptp",
    "quantile",
    "roll",
    "searchsorted",
    "setdiff1d",
    "setxor1d",
    "sort",
    "std",
    "sum",
    "tensordot",
    "tril",
    "triu",
    "union1d",
    "vander",
    "var",
    "where",
)
LINALG = (
    "cholesky",
    "cond",
    "det",
    "eigh",
    "eigvalsh",
    "inv",
    "matrix_power",
    "matrix_rank",
    "norm",
    "pinv",
    "qr",
    "slogdet",
    "solve",
    "svd",
)
FFT = (
    "fft",
    "fft2",
    "fftn",
    "hfft",
    "ifft",
    "ifft2",
    "ifftn",
    "ihfft",
    "irfft",
    "irfft2",
    "irfftn",
    "rfft",
    "rfft2",
    "rfftn",
)
# Functions whose result's size depends on the data: the client first asks for that size
# ("size.NAME" writes it into a 0-d output), then allocates the result, as CuPy synchronizes.
DATA_SIZED = ("intersect1d", "setdiff1d", "setxor1d", "union1d", "unique")

# RandomState methods, called with the output's shape as their size.
RANDOM = (
    "beta",
    "binomial",
    "chisquare",
    "choice",
    "exponential",
    "f",
    "gamma",
    "geometric",
    "gumbel",
    "integers",
    "laplace",
    "logistic",
    "lognormal",
    "negative_binomial",
    "normal",
    "pareto",
    "poisson",
    "power",
    "randint",
    "random",
    "random_sample",
    "rayleigh",
    "standard_cauchy",
    "standard_exponential",
    "standard_gamma",
    "standard_normal",
    "standard_t",
    "triangular",
    "uniform",
    "vonmises",
    "wald",
    "weibull",
    "zipf",
)

KEYWORDS = frozenset(
    {
        "append",
        "assume_unique",
        "atol",
        "axes",
        "axis",
        "bins",
        "compute_uv",
        "copy",
        "ddof",
        "decimals",
        "density",
        "dtype",
        "edge_order",
        "endpoint",
        "equal_nan",
        "full_matrices",
        "hermitian",
        "include_initial",
        "increasing",
        "invert",
        "k",
        "keepdims",
        "kind",
        "kth",
        "left",
        "method",
        "minlength",
        "mode",
        "n",
        "N",
        "nan",
        "neginf",
        "norm",
        "ord",
        "p",
        "period",
        "posinf",
        "prepend",
        "range",
        "rcond",
        "replace",
        "return_counts",
        "return_index",
        "return_inverse",
        "right",
        "rtol",
        "s",
        "shift",
        "side",
        "subscripts",
        "sorter",
        "tol",
        "UPLO",
        "weights",
    }
)
# The keywords that take a string, and the strings each takes (nothing else reaches a function;
# einsum's subscripts are parsed by ``arrayshapes.einsum_shape`` before einsum sees them).
TEXT_KEYWORDS: dict[str, frozenset[str] | None] = {
    "subscripts": None,
    "ord": frozenset({"fro", "nuc"}),  # norm's
    "p": frozenset({"fro", "nuc"}),  # cond's
    "method": arrayshapes.QUANTILE_METHODS,
    "side": frozenset({"left", "right"}),
    "mode": frozenset({"full", "same", "valid", "reduced", "complete", "r"}),
    "UPLO": frozenset({"L", "U"}),
    "norm": frozenset({"backward", "ortho", "forward"}),
    "kind": frozenset({"stable", "quicksort", "mergesort", "heapsort", "introselect"}),
}
NUMERIC_KINDS = "biufc"
MAX_DIMS = 64  # NumPy's limit
MAX_VIEWS = 4096  # checked views kept; the oldest goes first past this


@functools.lru_cache(maxsize=256)
def checked_dtype(text: str) -> np.dtype:
    """A numeric dtype from its wire spelling; TypeError for anything else (objects, records)."""
    dtype = np.dtype(text)
    if dtype.kind not in NUMERIC_KINDS or dtype.fields is not None or dtype.shape:
        raise TypeError(f"dtype {text!r} is not a numeric dtype")
    return dtype


class ByAllocation:
    """Things made from checked descriptors (views, decoded operations), by the bytes they were
    made from, each with the bases of the allocations its views lie in: freeing one of those
    drops them (a view would reach memory the session no longer owns, or another allocation
    at the same address). At most ``limit`` entries; the oldest goes first past it."""

    def __init__(self, limit: int = MAX_VIEWS) -> None:
        self._limit = limit
        self._entries: dict[bytes, tuple[tuple[int, ...], Any]] = {}
        self._by_base: dict[int, set[bytes]] = {}

    def get(self, key: bytes) -> tuple[tuple[int, ...], Any] | None:
        """(bases, thing) kept under ``key``."""
        return self._entries.get(key)

    def keep(self, key: bytes, bases: tuple[int, ...], thing: Any) -> None:
        if len(self._entries) >= self._limit:
            oldest = next(iter(self._entries))
            self._forget(oldest, self._entries.pop(oldest)[0])
        self._entries[key] = (bases, thing)
        for base in bases:
            self._by_base.setdefault(base, set()).add(key)

    def drop(self, base: int) -> None:
        """Forget everything that reaches the allocation at ``base``."""
        for key in self._by_base.pop(base, ()):
            found = self._entries.pop(key, None)
            if found is not None:
                self._forget(key, found[0])

    def _forget(self, key: bytes, bases: tuple[int, ...]) -> None:
        for base in bases:
            keys = self._by_base.get(base)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._by_base[base]


class ArrayFunctions:
    """The array functions of one session: its backend's module, random states, and checks."""

    def __init__(self, backend: Backend, allocations: AllocationTable) -> None:
        self._backend = backend
        self._allocations = allocations
        self._xp = backend.array_module()
        self._max_view_bytes = backend.properties().total_memory
        self._random_states: dict[int, Any] = {}
        self._generators: set[int] = set()  # ids of the states that are Generators
        self._table = self._make_table(self._xp)
        self._views = ByAllocation()
        self._prepared = ByAllocation()  # decoded operations: (function, args, kwargs, outs)
        self._bases: list[int] = []  # of the views the operation being decoded takes

    def freed(self, base: int) -> None:
        """The allocation at ``base`` was freed: no kept view may reach it any more."""
        self._views.drop(base)
        self._prepared.drop(base)

    def run(self, call: pb.ArrayOp, stream: object) -> None:
        function = self._table.get(call.function)
        if function is None:
            raise CUDARuntimeError(
                "cudaErrorNotSupported", f"array function {call.function!r} is not in the table"
            )
        try:
            with self._backend.on_stream(stream):
                if call.function.startswith("random."):  # a state to look up, never kept
                    args, kwargs, outs = self._decode(call)
                    args.insert(0, self._random_state(call))
                else:  # kept: the function gets lists of its own to change
                    args, kwargs, outs = self._prepare(call)
                    args, kwargs, outs = list(args), {**kwargs}, list(outs)
                function(args, kwargs, outs)
        except MemoryError as exc:  # the function's temporaries: CUDA's out of memory
            raise CUDARuntimeError(
                "cudaErrorMemoryAllocation", str(exc) or "out of memory"
            ) from exc
        except (ValueError, IndexError, TypeError, ArithmeticError) as exc:  # its own errors
            raise ArrayFunctionError.of(exc) from exc

    # operands

    def _prepare(self, call: pb.ArrayOp) -> tuple[list[Any], dict[str, Any], list[Any]]:
        """The operation's operands, decoded and checked once for the same bytes: a program
        repeats its operations on the same arrays."""
        key = call.SerializeToString()
        found = self._prepared.get(key)
        if found is not None:
            decoded: tuple[list[Any], dict[str, Any], list[Any]] = found[1]
            return decoded
        decoded = self._decode(call)
        self._prepared.keep(key, tuple(set(self._bases)), decoded)
        return decoded

    def _decode(self, call: pb.ArrayOp) -> tuple[list[Any], dict[str, Any], list[Any]]:
        """The operands, checked; ``_bases`` the allocations their views lie in."""
        self._bases = []
        outs = [self._array(desc, "output") for desc in call.out]
        args = [self._operand(operand) for operand in call.args]
        kwargs = {keyword.name: self._keyword(keyword) for keyword in call.kwargs}
        return args, kwargs, outs

    def _array(self, desc: pb.ArrayDesc, what: str) -> Any:
        key = desc.SerializeToString()
        found = self._views.get(key)
        if found is not None:
            self._bases += found[0]
            return found[1]
        dtype = checked_dtype(desc.dtype)
        shape, strides = tuple(desc.shape), tuple(desc.strides)
        if len(shape) != len(strides) or len(shape) > MAX_DIMS:
            raise ValueError(f"array of {len(shape)} dimensions with {len(strides)} strides")
        if 0 in shape:
            return self._xp.empty(shape, dtype)
        if math.prod(shape) * dtype.itemsize > self._max_view_bytes:
            # zero strides make any shape fit one element; its temporaries and loops would not
            raise ValueError(
                f"{what} array of shape {shape} spans more than the device's"
                f" {self._max_view_bytes} bytes"
            )
        if desc.ptr % dtype.alignment or any(s % dtype.alignment for s in strides):
            raise ValueError(f"{what} array at 0x{desc.ptr:x} is not aligned for {dtype}")
        low, high = array_extent(desc.ptr, shape, strides, dtype.itemsize)
        base = self._allocations.check(low, high - low, f"array {what}")
        view = self._backend.view(low, high - low, desc.ptr - low, shape, strides, dtype)
        self._views.keep(key, (base,), view)
        self._bases.append(base)
        return view

    def _operand(self, operand: pb.Operand) -> Any:
        kind = operand.WhichOneof("value")
        decode = _OPERANDS.get(kind or "")
        if decode is None:
            raise TypeError(f"operand of kind {kind} is not accepted here")
        return decode(self, operand)

    def _sequence(self, operand: pb.Operand) -> tuple[Any, ...]:
        return tuple(self._operand(item) for item in operand.sequence.items)

    def _keyword(self, keyword: pb.Keyword) -> Any:
        if keyword.name not in KEYWORDS:
            raise TypeError(f"keyword {keyword.name!r} is not accepted")
        if keyword.value.WhichOneof("value") == "text":
            if keyword.name not in TEXT_KEYWORDS:
                raise TypeError(f"keyword {keyword.name!r} takes no string")
            allowed = TEXT_KEYWORDS[keyword.name]
            if allowed is not None and keyword.value.text not in allowed:
                raise ValueError(f"{keyword.name}={keyword.value.text[:40]!r} is not accepted")
            return keyword.value.text
        return self._operand(keyword.value)

    def _random_state(self, call: pb.ArrayOp) -> Any:
        if call.function in ("random.seed", "random.generator", "random.release"):
            return call.generator
        try:
            return self._random_states[call.generator]
        except KeyError:
            raise CUDARuntimeError(
                "cudaErrorInvalidResourceHandle", f"random state {call.generator} does not exist"
            ) from None

    # the table

    def _make_table(self, xp: ModuleType) -> dict[str, Function]:
        """Name -> function. Built from the constant names above, never from a request."""
        table: dict[str, Function] = {}
        for name, function in _provided(xp, UFUNCS):
            table[name] = _ufunc(function)
            ufunc: Any = function  # NumPy's and CuPy's ufuncs: nin, nout and their methods
            if ufunc.nin == 2 and ufunc.nout == 1:
                for method in ("reduce", "accumulate", "outer"):
                    bound = getattr(ufunc, method, None)  # a constant name: the ufunc's own
                    if bound is not None:
                        table[f"{name}.{method}"] = self._returning(bound, method)
            if ufunc.nout == 1 and getattr(ufunc, "at", None) is not None:
                table[f"{name}.at"] = _ufunc_at(ufunc)
        for name, function in _provided(xp, RETURNING):
            table[name] = self._returning(function, name)
        for name, function in _provided(xp.linalg, LINALG):
            table[f"linalg.{name}"] = self._returning(function, name)
        for name, function in _provided(xp.fft, FFT):
            table[f"fft.{name}"] = self._returning(function, name)
        for name, function in _provided(xp, DATA_SIZED):
            table[f"size.{name}"] = self._sizing(function)
        table["unique"] = self._unique
        table["linalg.lstsq"] = self._lstsq
        table["einsum"] = self._einsum
        for name in RANDOM:
            table[f"random.{name}"] = self._sampling(name)
        table["random.seed"] = self._seeding(generator=False)
        table["random.generator"] = self._seeding(generator=True)
        table["random.release"] = self._release
        table["getitem"] = self._getitem
        table["setitem"] = _setitem
        table["assign"] = _assign
        table["arange"] = self._arange
        table["linspace"] = self._linspace
        return table

    def _store(self, outs: list[Any], result: Any) -> None:
        """Write a function's result(s) into the outputs, whose shapes the client inferred."""
        results = tuple(result) if isinstance(result, tuple | list) else (result,)
        if len(results) != len(outs):
            raise ValueError(f"{len(results)} results for {len(outs)} outputs")
        for out, value in zip(outs, results, strict=True):
            value = self._xp.asarray(value)
            if value.shape != out.shape:  # the client's inference disagrees: refuse, never guess
                raise ValueError(f"result of shape {value.shape} for an output of {out.shape}")
            out[...] = value

    def _returning(self, function: Callable[..., Any], name: str) -> Function:
        def run(args: list[Any], kwargs: dict[str, Any], outs: list[Any]) -> None:
            _check_fits(result_shape(name, args), outs)
            _check_size(name, args, kwargs, outs)
            self._store(outs, function(*args, **kwargs))

        return run

    def _sizing(self, function: Callable[..., Any]) -> Function:
        """The size a data-sized function's (first) result has, into a 0-d output."""

        def run(args: list[Any], kwargs: dict[str, Any], outs: list[Any]) -> None:
            (out,) = outs
            result = function(*args, **kwargs)
            first = result[0] if isinstance(result, tuple) else result
            axis = kwargs.get("axis")
            out[...] = first.size if axis is None else first.shape[axis]

        return run

    def _unique(self, args: list[Any], kwargs: dict[str, Any], outs: list[Any]) -> None:
        """``unique`` with its optional results; the inverse takes the shape the client gave
        it (NumPy and CuPy releases disagree on it; the values are the same)."""
        results = self._xp.unique(*args, **kwargs)
        results = results if isinstance(results, tuple) else (results,)
        if len(results) != len(outs):
            raise ValueError(f"{len(results)} results for {len(outs)} outputs")
        if kwargs.get("return_inverse"):
            at = 1 + bool(kwargs.get("return_index"))
            inverse = results[at]
            if inverse.size != outs[at].size:
                raise ValueError(f"inverse of {inverse.size} for an output of {outs[at].size}")
            results = (*results[:at], inverse.reshape(outs[at].shape), *results[at + 1 :])
        self._store(outs, results)

    def _lstsq(self, args: list[Any], kwargs: dict[str, Any], outs: list[Any]) -> None:
        """``linalg.lstsq`` into (solution, squared residuals of every column, rank, singular
        values): the residuals NumPy returns only where the rank is full and the system
        over-determined, which the client learns from the rank (one synchronizing call, as in
        CuPy)."""
        a, b = args
        solution, _, rank, singular = self._xp.linalg.lstsq(a, b, **kwargs)
        residuals = (self._xp.abs(b - a @ solution) ** 2).sum(axis=0)
        self._store(outs, (solution, residuals.reshape(outs[1].shape), rank, singular))

    def _einsum(self, args: list[Any], kwargs: dict[str, Any], outs: list[Any]) -> None:
        subscripts = kwargs.pop("subscripts")
        shape = arrayshapes.einsum_shape(subscripts, [getattr(arg, "shape", ()) for arg in args])
        _check_fits(shape, outs)
        self._store(outs, self._xp.einsum(subscripts, *args, **kwargs))

    def _sampling(self, method: str) -> Function:
        def run(args: list[Any], kwargs: dict[str, Any], outs: list[Any]) -> None:
            state, *params = args
            (out,) = outs
            sample = getattr(state, method, None)  # a constant name: RandomState's or Generator's
            if sample is None:
                raise TypeError(f"{type(state).__name__} has no {method}")
            if method in _INTEGER_SAMPLES or (
                method in _FLOAT_SAMPLES and id(state) in self._generators
            ):
                kwargs = {**kwargs, "dtype": out.dtype}
            if method == "choice" and not kwargs.get("replace", True):
                self._check_population(params[0] if params else None)
            self._store(outs, sample(*params, size=out.shape, **kwargs))

        return run

    def _check_population(self, population: Any) -> None:
        """Sampling without replacement permutes the whole population: an int one may not
        need more memory than the device has (a view of one is bounded the same way)."""
        if isinstance(population, int) and population * 8 > self._max_view_bytes:
            raise ValueError(
                f"a population of {population} spans more than the device's"
                f" {self._max_view_bytes} bytes"
            )

    def _seeding(self, generator: bool) -> Function:
        """Makes a RandomState (``random.seed``) or a Generator (``random.generator``) under
        the client's handle, which ``run`` passes as the first argument."""

        def run(args: list[Any], kwargs: dict[str, Any], outs: list[Any]) -> None:
            handle, seed = args
            if seed is not None and not (isinstance(seed, int) and 0 <= seed < 2**64):
                raise ValueError(f"seed must be an integer in [0, 2**64) or None, not {seed!r}")
            self._forget(handle)
            if generator:
                state = self._backend.random_generator(seed)
                self._generators.add(id(state))
            else:
                state = self._backend.random_state(seed)
            self._random_states[handle] = state

        return run

    def _forget(self, handle: int) -> None:
        self._generators.discard(id(self._random_states.pop(handle, None)))

    def _release(self, args: list[Any], kwargs: dict[str, Any], outs: list[Any]) -> None:
        (handle,) = args
        self._forget(handle)

    def _getitem(self, args: list[Any], kwargs: dict[str, Any], outs: list[Any]) -> None:
        array, key = args
        _check_fits(indexed_shape(array, key), outs)
        self._store(outs, array[key])

    def _arange(self, args: list[Any], kwargs: dict[str, Any], outs: list[Any]) -> None:
        start, stop, step = args
        (out,) = outs
        if step == 0 or abs((stop - start) / step) > out.size + 1:  # no huge temporaries
            raise ValueError(f"arange({start}, {stop}, {step}) does not fit {out.size} elements")
        self._store(outs, self._xp.arange(start, stop, step, dtype=out.dtype))

    def _linspace(self, args: list[Any], kwargs: dict[str, Any], outs: list[Any]) -> None:
        start, stop = args
        (out,) = outs
        result = self._xp.linspace(start, stop, num=out.size, dtype=out.dtype, **kwargs)
        self._store(outs, result)


_SLICE = ("start", "stop", "step")
# Samplers that take the output's dtype: always, and only a Generator's (NumPy's RandomState
# makes float64 and the output casts).
_INTEGER_SAMPLES = ("randint", "integers")
_FLOAT_SAMPLES = ("random", "standard_normal")

# An operand's kind -> its value (a string is taken only as a keyword's, see _keyword).
_OPERANDS: dict[str, Callable[[ArrayFunctions, pb.Operand], Any]] = {
    "array": lambda self, operand: self._array(operand.array, "operand"),
    "real": lambda self, operand: operand.real,
    "integer": lambda self, operand: operand.integer,
    "unsigned": lambda self, operand: operand.unsigned,
    "boolean": lambda self, operand: operand.boolean,
    "scalar": lambda self, operand: from_scalar(operand.scalar),
    "complex": lambda self, operand: complex(operand.complex.real, operand.complex.imag),
    "sequence": ArrayFunctions._sequence,
    "slice": lambda self, operand: slice(
        *(getattr(operand.slice, f) if operand.slice.HasField(f) else None for f in _SLICE)
    ),
    "none": lambda self, operand: None,
    "ellipsis": lambda self, operand: Ellipsis,
    "dtype": lambda self, operand: checked_dtype(operand.dtype),
}


def _provided(module: ModuleType, names: Sequence[str]) -> Iterator[tuple[str, Callable[..., Any]]]:
    """The functions of ``names`` that ``module`` has (an older CuPy may lack one: that name
    is then refused as not in the table, and the session still works)."""
    for name in names:
        function = getattr(module, name, None)
        if function is None:
            log.warning("array function missing", extra=fields(module=module.__name__, name=name))
        else:
            yield name, function


def _ufunc(function: Callable[..., Any]) -> Function:
    """Outputs passed positionally, written in place. The client checked the casts with NumPy's
    rules; "unsafe" here keeps CuPy, whose loop for a mix of dtypes may differ from NumPy's,
    from refusing the output dtype NumPy chose."""

    def run(args: list[Any], kwargs: dict[str, Any], outs: list[Any]) -> None:
        function(*args, *outs, casting="unsafe", **kwargs)

    return run


def result_shape(name: str, args: Sequence[Any]) -> tuple[int, ...] | None:
    """The shape of a product's or a broadcasting function's result, from its operands' shapes
    alone: such a result may be far bigger than any operand, so it is checked against the
    output before it is computed. None for other functions, and for operands the function
    does not take (it then raises its own error)."""
    shapes = [tuple(getattr(arg, "shape", ())) for arg in args]  # a scalar is 0-d
    try:
        if name in _BROADCASTING:
            return tuple(np.broadcast_shapes(*shapes))
        if name not in _PRODUCTS:
            return None
        a, b = shapes[:2]
        if name == "outer":
            return (math.prod(a), math.prod(b))
        if not a or not b:
            return tuple(np.broadcast_shapes(a, b))
        columns = b[-1:] if len(b) > 1 else ()  # a vector b contributes no dimension
        if name == "inner":
            return a[:-1] + b[:-1]
        if name == "dot":
            return a[:-1] + b[:-2] + columns
        return tuple(np.broadcast_shapes(a[:-2], b[:-2])) + a[-2:-1] + columns  # matmul
    except (ValueError, TypeError):
        return None


def indexed_shape(array: Any, key: Any) -> tuple[int, ...] | None:
    """The shape ``array[key]`` has, from an empty stand-in (the extra empty last dimension
    keeps NumPy from copying anything); None where a boolean mask's count is needed (its
    result is no bigger than the array) or the key is not valid (indexing then says why)."""
    parts = key if isinstance(key, tuple) else (key,)
    stand_ins: list[Any] = []
    for part in parts:
        dtype = getattr(part, "dtype", None)
        if dtype is not None and dtype.kind == "b":
            return None
        stand_ins.append(part if dtype is None else np.broadcast_to(np.intp(0), part.shape))
    if any(part is Ellipsis for part in parts):
        stand_ins.append(slice(None))  # the ellipsis must not reach the extra dimension
    try:
        return tuple(np.broadcast_to(np.False_, (*array.shape, 0))[tuple(stand_ins)].shape[:-1])
    except (IndexError, ValueError, TypeError):
        return None


_BROADCASTING = ("around", "clip", "isclose", "where")
_PRODUCTS = ("dot", "inner", "matmul", "outer")


def _check_fits(shape: tuple[int, ...] | None, outs: Sequence[Any]) -> None:
    """Refuse a result bigger than its outputs before computing it (the client's own results
    always fit: it allocated them from the same shapes)."""
    if shape is not None and math.prod(shape) > sum(out.size for out in outs):
        shapes = ", ".join(str(out.shape) for out in outs)
        raise ValueError(f"result of shape {shape} does not fit the output(s) {shapes}")


def _check_size(
    name: str, args: Sequence[Any], kwargs: dict[str, Any], outs: Sequence[Any]
) -> None:
    """Refuse, before computing it, a result that its arguments (numbers the client chose,
    such as ``N``, ``bins`` or an FFT's length) would make bigger than its outputs."""
    rule = _SIZE_RULES.get(name)
    if rule is None:
        return
    try:
        elements = rule(args, kwargs)
    except (TypeError, ValueError, IndexError, AttributeError):
        return  # arguments the function refuses itself, with its own error
    room = sum(out.size for out in outs)
    if elements > room:
        raise ValueError(f"{name}'s result of {elements} elements does not fit its outputs")


def _shape(value: Any) -> tuple[int, ...]:
    return tuple(getattr(value, "shape", ()))


def _vander(args: Sequence[Any], kwargs: dict[str, Any]) -> int:
    (x,) = args[:1]
    columns = kwargs.get("N")
    return math.prod(_shape(x)) * (math.prod(_shape(x)) if columns is None else int(columns))


def _diagonal_matrix(args: Sequence[Any], kwargs: dict[str, Any]) -> int:
    """``diagflat``, and ``diag`` of a vector: a square of the size plus the offset."""
    k = abs(int(kwargs.get("k", args[1] if len(args) > 1 else 0)))
    return (math.prod(_shape(args[0])) + k) ** 2


def _diag(args: Sequence[Any], kwargs: dict[str, Any]) -> int:
    shape = _shape(args[0])
    return min(shape) if len(shape) == 2 else _diagonal_matrix(args, kwargs)


def _fft(name: str) -> Callable[[Sequence[Any], dict[str, Any]], int]:
    """The transform's result (its input padded to ``n``/``s`` is never bigger than that, but
    by half for a real forward transform, whose output is half as long)."""

    def rule(args: Sequence[Any], kwargs: dict[str, Any]) -> int:
        n, axis, s, axes = (kwargs.get(key) for key in ("n", "axis", "s", "axes"))
        return math.prod(arrayshapes.fft_shape(name, _shape(args[0]), n, axis, s, axes))

    return rule


def _bincount(args: Sequence[Any], kwargs: dict[str, Any]) -> int:
    x = args[0]
    top = int(x.max()) + 1 if getattr(x, "size", 0) else 0
    return max(top, int(kwargs.get("minlength", 0) or 0))


def _histogram(args: Sequence[Any], kwargs: dict[str, Any]) -> int:
    bins = kwargs.get("bins", 10)
    return int(bins) + 1 if isinstance(bins, int) else 0


def _quantile(args: Sequence[Any], kwargs: dict[str, Any]) -> int:
    a, q = args[:2]
    shape = arrayshapes.quantile_shape(
        _shape(a), _shape(q), kwargs.get("axis"), bool(kwargs.get("keepdims", False))
    )
    return math.prod(shape)


def _svd(args: Sequence[Any], kwargs: dict[str, Any]) -> int:
    shapes = arrayshapes.svd_shapes(_shape(args[0]), kwargs.get("full_matrices", True))
    return sum(map(math.prod, shapes if kwargs.get("compute_uv", True) else shapes[1:2]))


_SIZE_RULES: dict[str, Callable[[Sequence[Any], dict[str, Any]], int]] = {
    "vander": _vander,
    "diag": _diag,
    "diagflat": _diagonal_matrix,
    "bincount": _bincount,
    "histogram": _histogram,
    "kron": lambda args, kwargs: math.prod(
        arrayshapes.kron_shape(_shape(args[0]), _shape(args[1]))
    ),
    "tensordot": lambda args, kwargs: math.prod(
        arrayshapes.tensordot_shape(_shape(args[0]), _shape(args[1]), kwargs.get("axes", 2))
    ),
    "quantile": _quantile,
    "percentile": _quantile,
    "nanquantile": _quantile,
    "nanpercentile": _quantile,
    "svd": _svd,
    "qr": lambda args, kwargs: sum(
        map(math.prod, arrayshapes.qr_shapes(_shape(args[0]), kwargs.get("mode", "reduced")))
    ),
    **{name: _fft(name) for name in FFT},
}


def _ufunc_at(function: Any) -> Function:
    """``ufunc.at(target, indices[, b])`` into the output, unbuffered."""

    def run(args: list[Any], kwargs: dict[str, Any], outs: list[Any]) -> None:
        (target,) = outs
        key = args[0] if isinstance(args[0], tuple) else (args[0],)
        for axis, part in enumerate(key[: target.ndim]):
            if getattr(part, "dtype", None) is not None and part.dtype.kind in "iu" and part.size:
                size = target.shape[axis]
                if int(part.min()) < -size or int(part.max()) >= size:  # CuPy would wrap
                    raise IndexError(f"index out of bounds for axis {axis} with size {size}")
        function.at(target, *args)

    return run


def _setitem(args: list[Any], kwargs: dict[str, Any], outs: list[Any]) -> None:
    key, value = args
    (target,) = outs
    target[key] = value


def _assign(args: list[Any], kwargs: dict[str, Any], outs: list[Any]) -> None:
    """Copy (with casting and broadcasting) into the output: copy, astype, fill, full."""
    (value,) = args
    (out,) = outs
    out[...] = value


@contextlib.contextmanager
def quietly() -> Iterator[None]:
    """No NumPy warnings (division by zero, mean of an empty slice): CuPy gives none, the
    client asked for IEEE results, and a warning would land in the daemon's JSON-line log.

    Entered once per request (a batch of thousands of operations), not per operation: it
    costs more than a small operation itself."""
    with warnings.catch_warnings(action="ignore"), np.errstate(all="ignore"):
        yield
