"""Elementwise functions: CuPy's ufuncs, ``where`` and ``clip``, computed on the daemon.

Shapes broadcast and dtypes promote as in NumPy (``_infer``); the output is allocated here and
the operation queued.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import numpy as np

from gpupool.client import runtime
from gpupool.cupy import _remote
from gpupool.cupy import _ufunc_methods as _methods
from gpupool.cupy._infer import broadcast_shape, common_device, meta, meta_key, output_arrays
from gpupool.cupy._ndarray import ndarray
from gpupool.cupy._support import unsupported


def elementwise(
    name: str,
    numpy_function: Callable[..., Any],
    inputs: Sequence[Any],
    outs: Sequence[ndarray] = (),
    nout: int = 1,
    kwargs: dict[str, Any] | None = None,
) -> Any:
    """Queue ``name(*inputs)`` on the daemon; the output array(s), allocated here."""
    kwargs = kwargs or {}
    arrays = [value for value in inputs if isinstance(value, ndarray)]
    device = common_device([*arrays, *outs])
    shape = broadcast_shape(arrays)
    dtypes = _result_dtypes(name, numpy_function, inputs, outs, kwargs)
    if outs:
        if len(outs) != nout:
            raise ValueError(f"{name} has {nout} output(s), {len(outs)} given")
        for out in outs:
            if out.shape != shape and np.broadcast_shapes(shape, out.shape) != out.shape:
                raise ValueError(
                    f"non-broadcastable output operand with shape {out.shape} doesn't match"
                    f" the broadcast shape {shape}"
                )
    else:
        with _remote.on_device(device):
            outs = tuple(ndarray(shape, dtype) for dtype in dtypes)
    _remote.enqueue(name, device, inputs, kwargs, outs)
    return outs[0] if nout == 1 else tuple(outs)


# (function, operand kinds, output dtypes, keywords) -> result dtypes: the same kinds always
# promote the same way (NEP 50), so NumPy is asked once per combination
_DTYPES: dict[tuple[Any, ...], list[np.dtype]] = {}
_MAX_DTYPES = 4096


def _result_dtypes(
    name: str,
    numpy_function: Callable[..., Any],
    inputs: Sequence[Any],
    outs: Sequence[ndarray],
    kwargs: dict[str, Any],
) -> list[np.dtype]:
    key = (
        name,
        tuple(map(meta_key, inputs)),
        tuple(out.dtype for out in outs),
        tuple(kwargs.items()),
    )
    dtypes = _DTYPES.get(key)
    if dtypes is None:
        out_metas = {"out": tuple(np.empty(0, out.dtype) for out in outs)} if outs else {}
        with np.errstate(all="ignore"):
            result = numpy_function(*map(meta, inputs), **kwargs, **out_metas)
        results = result if isinstance(result, tuple) else (result,)
        dtypes = [np.asarray(each).dtype for each in results]
        if len(_DTYPES) >= _MAX_DTYPES:
            _DTYPES.clear()
        _DTYPES[key] = dtypes
    return dtypes


def _same_shape(function: ufunc, inputs: tuple[Any, ...]) -> ndarray | None:
    """The common case, fast: arrays of one shape on one device (and Python numbers) into a
    new array. None for anything else, which :func:`elementwise` then handles (and refuses
    with NumPy's errors). The same result: the same dtype table, shape and device."""
    if len(inputs) != function.nin:
        return None
    shape = device = None
    for value in inputs:
        if type(value) is ndarray:
            if shape is None:
                shape, device = value._shape, value.data.device_id
            elif value._shape != shape or value.data.device_id != device:
                return None
        elif type(value) not in _NUMBERS:
            return None
        elif type(value) is int and not _WIRE_INTS[0] <= value <= _WIRE_INTS[1]:
            return None  # beyond every dtype: comparisons take it their own way
    if shape is None or device is None:
        return None
    (dtype,) = _result_dtypes(function.name, function._numpy, inputs, (), {})
    if device == runtime.getDevice():
        result = ndarray._result(shape, dtype)
    else:
        with _remote.on_device(device):
            result = ndarray._result(shape, dtype)
    _remote.enqueue(function.name, device, inputs, None, (result,))
    return result


_NUMBERS = (float, int, bool, complex)


class ufunc:
    """A CuPy universal function: elementwise, broadcasting, with ``out=`` and ``dtype=``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._numpy = getattr(np, name)  # one of the constant names below
        self.nin: int = self._numpy.nin
        self.nout: int = self._numpy.nout
        self.nargs = self.nin + self.nout
        self.__name__ = name

    def __call__(self, *args: Any, out: Any = None, dtype: Any = None, **kwargs: Any) -> Any:
        if out is None and dtype is None and not kwargs and self.nout == 1:
            result = _same_shape(self, args)
            if result is not None:
                return result
        if kwargs:
            unsupported(f"cupy.{self.name} with {', '.join(sorted(kwargs))}=")
        if len(args) not in (self.nin, self.nargs):
            raise TypeError(f"Wrong number of arguments for {self.name!r}")
        if len(args) > self.nin and out is not None:
            raise TypeError("cannot specify 'out' as both a positional and keyword argument")
        outs = output_arrays(tuple(args[self.nin :]) or out)
        options = {} if dtype is None else {"dtype": np.dtype(dtype)}
        inputs = args[: self.nin]
        if self.name in _COMPARISONS:
            floats = any(getattr(each, "dtype", np.dtype(int)).kind in "fc" for each in inputs)
            inputs = tuple(_comparable(each, floats) for each in inputs)
        return elementwise(self.name, self._numpy, inputs, outs, self.nout, options)

    def reduce(
        self,
        array: Any,
        axis: Any = 0,
        dtype: Any = None,
        out: Any = None,
        keepdims: bool = False,
    ) -> Any:
        """The ufunc applied cumulatively along ``axis`` down to one value (``add.reduce`` is
        ``sum``)."""
        return _methods.reduce(self, array, axis, dtype, out, keepdims)

    def accumulate(self, array: Any, axis: int = 0, dtype: Any = None, out: Any = None) -> Any:
        """Every intermediate result of ``reduce`` along ``axis``."""
        return _methods.accumulate(self, array, axis, dtype, out)

    def outer(self, A: Any, B: Any, **kwargs: Any) -> Any:
        """The ufunc of every pair of elements of ``A`` and ``B``."""
        return _methods.outer(self, A, B, **kwargs)

    def at(self, a: Any, indices: Any, b: Any = None) -> None:
        """In place, unbuffered: repeated indices apply once each."""
        _methods.at(self, a, indices, b)

    def __getattr__(self, name: str) -> NoReturn:  # reduceat and other ufunc attributes
        if name.startswith("__"):
            raise AttributeError(name)
        unsupported(f"cupy.{self.name}.{name}")

    def __repr__(self) -> str:
        return f"<ufunc '{self.name}'>"


absolute = ufunc("absolute")
add = ufunc("add")
arccos = ufunc("arccos")
arccosh = ufunc("arccosh")
arcsin = ufunc("arcsin")
arcsinh = ufunc("arcsinh")
arctan = ufunc("arctan")
arctan2 = ufunc("arctan2")
arctanh = ufunc("arctanh")
bitwise_and = ufunc("bitwise_and")
bitwise_or = ufunc("bitwise_or")
bitwise_xor = ufunc("bitwise_xor")
cbrt = ufunc("cbrt")
ceil = ufunc("ceil")
conjugate = ufunc("conjugate")
copysign = ufunc("copysign")
cos = ufunc("cos")
cosh = ufunc("cosh")
deg2rad = ufunc("deg2rad")
divide = ufunc("divide")
divmod = ufunc("divmod")
equal = ufunc("equal")
exp = ufunc("exp")
exp2 = ufunc("exp2")
expm1 = ufunc("expm1")
fabs = ufunc("fabs")
float_power = ufunc("float_power")
floor = ufunc("floor")
floor_divide = ufunc("floor_divide")
fmax = ufunc("fmax")
fmin = ufunc("fmin")
fmod = ufunc("fmod")
frexp = ufunc("frexp")
gcd = ufunc("gcd")
greater = ufunc("greater")
greater_equal = ufunc("greater_equal")
heaviside = ufunc("heaviside")
hypot = ufunc("hypot")
invert = ufunc("invert")
isfinite = ufunc("isfinite")
isinf = ufunc("isinf")
isnan = ufunc("isnan")
lcm = ufunc("lcm")
ldexp = ufunc("ldexp")
left_shift = ufunc("left_shift")
less = ufunc("less")
less_equal = ufunc("less_equal")
log = ufunc("log")
log10 = ufunc("log10")
log1p = ufunc("log1p")
log2 = ufunc("log2")
logaddexp = ufunc("logaddexp")
logaddexp2 = ufunc("logaddexp2")
logical_and = ufunc("logical_and")
logical_not = ufunc("logical_not")
logical_or = ufunc("logical_or")
logical_xor = ufunc("logical_xor")
maximum = ufunc("maximum")
minimum = ufunc("minimum")
modf = ufunc("modf")
multiply = ufunc("multiply")
negative = ufunc("negative")
nextafter = ufunc("nextafter")
not_equal = ufunc("not_equal")
positive = ufunc("positive")
power = ufunc("power")
rad2deg = ufunc("rad2deg")
reciprocal = ufunc("reciprocal")
remainder = ufunc("remainder")
right_shift = ufunc("right_shift")
rint = ufunc("rint")
sign = ufunc("sign")
signbit = ufunc("signbit")
sin = ufunc("sin")
sinh = ufunc("sinh")
sqrt = ufunc("sqrt")
square = ufunc("square")
subtract = ufunc("subtract")
tan = ufunc("tan")
tanh = ufunc("tanh")
true_divide = ufunc("true_divide")
trunc = ufunc("trunc")

_COMPARISONS = frozenset({"equal", "not_equal", "less", "less_equal", "greater", "greater_equal"})
_WIRE_INTS = (-(2**63), 2**64 - 1)


def _comparable(value: Any, floats: bool) -> Any:
    """A Python int beyond any dtype, as a comparison can still take it (NumPy 2 compares
    such ints with integer arrays exactly): against floats, the float it is; against
    integers, the infinity of its sign, which every integer compares with as with the int."""
    if isinstance(value, int) and not isinstance(value, bool):
        if not _WIRE_INTS[0] <= value <= _WIRE_INTS[1]:
            if floats:
                return float(value)
            return float("inf") if value > 0 else float("-inf")
    return value


# CuPy's (and NumPy's) other names for the same functions
abs = absolute
bitwise_not = invert
conj = conjugate
degrees = rad2deg
mod = remainder
radians = deg2rad

_ALL = [each for each in list(globals().values()) if isinstance(each, ufunc)]
BY_NAME = {each.name: each for each in _ALL}  # for the operators
BY_NUMPY_NAME = {each._numpy.__name__: each for each in _ALL}  # for ``__array_ufunc__``
BY_NUMPY_NAME.update({"degrees": rad2deg, "radians": deg2rad})


def where(condition: Any, x: Any = None, y: Any = None) -> Any:
    """Elements of ``x`` where ``condition`` holds, else of ``y``."""
    if x is None and y is None:  # the indices where it holds: nonzero's
        from gpupool.cupy._searching import nonzero

        return nonzero(condition)
    if x is None or y is None:
        raise ValueError("Must provide both 'x' and 'y' or neither.")
    result: ndarray = elementwise("where", np.where, (condition, x, y))
    return result


def clip(a: Any, a_min: Any, a_max: Any, out: Any = None) -> ndarray:
    """``a`` limited to ``[a_min, a_max]`` (either may be None)."""
    result: ndarray = elementwise("clip", np.clip, (a, a_min, a_max), output_arrays(out))
    return result


def isclose(
    a: Any, b: Any, rtol: float = 1e-05, atol: float = 1e-08, equal_nan: bool = False
) -> ndarray:
    """Elementwise ``|a - b| <= atol + rtol * |b|``."""
    options = {"rtol": rtol, "atol": atol, "equal_nan": equal_nan}
    result: ndarray = elementwise("isclose", np.isclose, (a, b), kwargs=options)
    return result


def allclose(
    a: Any, b: Any, rtol: float = 1e-05, atol: float = 1e-08, equal_nan: bool = False
) -> ndarray:
    """True (a 0-d array, as CuPy's) when every element is close."""
    return isclose(a, b, rtol, atol, equal_nan).all()


def array_equal(a1: ndarray, a2: ndarray, equal_nan: bool = False) -> ndarray:
    """True (a 0-d array, as CuPy's) for arrays of one shape and equal elements."""
    if a1.shape != a2.shape:
        with _remote.on_device(common_device([a1, a2])):
            return equal(False, True)  # a 0-d False on their device
    if equal_nan:
        return isclose(a1, a2, rtol=0, atol=0, equal_nan=True).all()
    return equal(a1, a2).all()


def around(a: Any, decimals: int = 0, out: Any = None) -> ndarray:
    """Round to ``decimals`` decimal places (halves to even, as NumPy)."""
    options = {"decimals": decimals}
    result: ndarray = elementwise("around", np.around, (a,), output_arrays(out), kwargs=options)
    return result


round = around
