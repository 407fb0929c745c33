"""``cupy.random``: random numbers made on the daemon, by generators that live there.

A :class:`RandomState` is a handle: its generator lives in the session of the device it was
made on (CuPy's on a GPU, NumPy's MT19937 on the emulator), so sampling queues an operation
and costs no round trip. The same seed gives the same numbers on the same backend; the two
backends' streams differ, as CuPy's differ from NumPy's.
"""

from __future__ import annotations

import operator
import weakref
from typing import Any

import numpy as np

from gpupool.client import context, runtime
from gpupool.client.session import Session, new_handle
from gpupool.cupy import _remote
from gpupool.cupy._ndarray import ndarray, shape_tuple
from gpupool.cupy._support import module_getattr, unsupported
from gpupool.errors import GpupoolError
from gpupool.proto import gpupool_pb2 as pb

__getattr__ = module_getattr(__name__)

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def _size(size: Any) -> tuple[int, ...]:
    return () if size is None else shape_tuple(size)


def _float_dtype(dtype: Any) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype not in _FLOATS:
        raise TypeError("cupy.random only supports float32 and float64")
    return dtype


def _scalar(name: str, value: Any) -> Any:
    if isinstance(value, ndarray | np.ndarray | list | tuple):
        unsupported(f"cupy.random.{name} with array parameters")
    return value


# Distributions: (parameters with their defaults, the result's dtype: None for the float dtype
# asked for, else an integer dtype as CuPy's).
_DISTRIBUTIONS: dict[str, tuple[tuple[tuple[str, Any], ...], Any]] = {
    "beta": ((("a", None), ("b", None)), None),
    "binomial": ((("n", None), ("p", None)), np.int64),
    "chisquare": ((("df", None),), None),
    "exponential": ((("scale", 1.0),), None),
    "f": ((("dfnum", None), ("dfden", None)), None),
    "gamma": ((("shape", None), ("scale", 1.0)), None),
    "geometric": ((("p", None),), np.int64),
    "gumbel": ((("loc", 0.0), ("scale", 1.0)), None),
    "laplace": ((("loc", 0.0), ("scale", 1.0)), None),
    "logistic": ((("loc", 0.0), ("scale", 1.0)), None),
    "lognormal": ((("mean", 0.0), ("sigma", 1.0)), None),
    "negative_binomial": ((("n", None), ("p", None)), np.int64),
    "pareto": ((("a", None),), None),
    "poisson": ((("lam", 1.0),), np.int64),
    "power": ((("a", None),), None),
    "rayleigh": ((("scale", 1.0),), None),
    "standard_cauchy": ((), None),
    "standard_exponential": ((), None),
    "standard_gamma": ((("shape", None),), None),
    "standard_t": ((("df", None),), None),
    "triangular": ((("left", None), ("mode", None), ("right", None)), None),
    "vonmises": ((("mu", None), ("kappa", None)), None),
    "wald": ((("mean", None), ("scale", None)), None),
    "weibull": ((("a", None),), None),
    "zipf": ((("a", None),), np.int64),
}


def _parameter(device: int, value: Any) -> Any:
    """A distribution's parameter: a number, or an array on the generator's device (host
    arrays and lists are copied there, as CuPy takes them)."""
    if isinstance(value, ndarray) or np.ndim(value) == 0:
        return value
    from gpupool.cupy._creation import asarray

    with _remote.on_device(device):
        return asarray(np.asarray(value, dtype=np.float64))


def _shape_of(size: Any, params: tuple[Any, ...]) -> tuple[int, ...]:
    """``size``, or the parameters' broadcast shape without one (as CuPy and NumPy)."""
    if size is not None:
        return _size(size)
    return tuple(np.broadcast_shapes(*(tuple(getattr(p, "shape", ())) for p in params)))


def _distribution(method: str) -> Any:
    names, integer = _DISTRIBUTIONS[method]

    def sample(
        self: _Sampler, *args: Any, size: Any = None, dtype: Any = None, **kw: Any
    ) -> ndarray:
        if len(args) > len(names) + 1:
            raise TypeError(f"{method}() takes at most {len(names) + 1} positional arguments")
        values = dict(zip([name for name, _ in names], args, strict=False))
        if len(args) == len(names) + 1:
            size = args[-1]
        for name, default in names:
            if name in kw:
                values[name] = kw.pop(name)
            elif name not in values:
                if default is None:
                    raise TypeError(f"{method}() missing required argument {name!r}")
                values[name] = default
        if kw:
            raise TypeError(f"{method}() got an unexpected keyword argument {next(iter(kw))!r}")
        params = tuple(_parameter(self._device, values[name]) for name, _ in names)
        shape = _shape_of(size, params)
        result_dtype = np.dtype(integer) if integer is not None else _float_dtype(dtype or float)
        if integer is not None and dtype is not None:
            result_dtype = np.dtype(dtype)
        return self._sample(method, shape, result_dtype, params)

    sample.__name__ = method
    sample.__doc__ = f"Samples of the {method.replace('_', ' ')} distribution, as CuPy's."
    return sample


def _seed_value(seed: Any) -> int | None:
    return None if seed is None else int(np.asarray(seed).astype(np.uint64))  # CuPy's conversion


class _Sampler:
    """A generator that lives in the session of the device current when it was made: its
    samples are queued operations (no round trip)."""

    _kind = "random.seed"  # the daemon's operation that makes (or re-seeds) the generator

    def __init__(self, seed: Any = None) -> None:
        self._device = runtime.getDevice()
        self._handle = new_handle()
        self._make(seed)
        session = context.current().session(self._device)
        weakref.finalize(self, _release, session, self._handle).atexit = False

    def _make(self, seed: Any) -> None:
        _remote.enqueue(self._kind, self._device, (_seed_value(seed),), generator=self._handle)

    def _sample(
        self, method: str, size: Any, dtype: Any, params: tuple[Any, ...] = (), **kwargs: Any
    ) -> ndarray:
        with _remote.on_device(self._device):
            out = ndarray(_size(size), dtype)
        _remote.enqueue(
            f"random.{method}", self._device, params, kwargs, (out,), generator=self._handle
        )
        return out


class RandomState(_Sampler):
    """A generator on the current device; ``seed`` as in CuPy (None: from the OS)."""

    def __init__(self, seed: Any = None, method: Any = None) -> None:
        super().__init__(seed)

    def seed(self, seed: Any = None) -> None:
        self._make(seed)

    def random_sample(self, size: Any = None, dtype: Any = float) -> ndarray:
        return self._sample("random_sample", size, _float_dtype(dtype))

    random = random_sample

    def rand(self, *size: int, dtype: Any = float) -> ndarray:
        return self.random_sample(size, dtype)

    def standard_normal(self, size: Any = None, dtype: Any = float) -> ndarray:
        return self._sample("standard_normal", size, _float_dtype(dtype))

    def randn(self, *size: int, dtype: Any = float) -> ndarray:
        return self.standard_normal(size, dtype)

    def normal(
        self, loc: float = 0.0, scale: float = 1.0, size: Any = None, dtype: Any = float
    ) -> ndarray:
        params = (_parameter(self._device, loc), _parameter(self._device, scale))
        return self._sample("normal", _shape_of(size, params), _float_dtype(dtype), params)

    def uniform(
        self, low: float = 0.0, high: float = 1.0, size: Any = None, dtype: Any = float
    ) -> ndarray:
        params = (_parameter(self._device, low), _parameter(self._device, high))
        return self._sample("uniform", _shape_of(size, params), _float_dtype(dtype), params)

    def randint(
        self, low: int, high: int | None = None, size: Any = None, dtype: Any = int
    ) -> ndarray:
        """Integers in ``[low, high)`` (``[0, low)`` without ``high``)."""
        if high is None:
            low, high = 0, low
        low, high = (
            operator.index(_scalar("randint", low)),
            operator.index(_scalar("randint", high)),
        )
        if low >= high:
            raise ValueError("low >= high")
        dtype = np.dtype(dtype)
        if dtype.kind not in "iu":
            raise TypeError(f"Unsupported dtype {dtype} for randint")
        return self._sample("randint", size, dtype, (low, high))

    def choice(self, a: Any, size: Any = None, replace: bool = True, p: Any = None) -> ndarray:
        """Samples of ``a`` (an int n stands for ``arange(n)``), with probabilities ``p``."""
        if isinstance(a, ndarray):
            if a.ndim != 1:
                raise ValueError("a must be 1-dimensional")
            population, dtype = a.shape[0], a.dtype
        else:
            population, dtype = operator.index(a), np.dtype(np.int64)
            if population < 0:
                raise ValueError("a must be greater than or equal to 0")
        shape = _size(size)
        if not replace and int(np.prod(shape)) > population:
            raise ValueError("Cannot take a larger sample than population when 'replace=False'")
        if p is not None:
            from gpupool.cupy._creation import asarray

            with _remote.on_device(self._device):
                p = asarray(p)
            if p.shape != (population,):
                raise ValueError("a and p must have same size")
        return self._sample("choice", size, dtype, (a,), replace=replace, p=p)


class Generator(_Sampler):
    """``cupy.random.Generator`` (from ``default_rng``): NumPy's PCG64 on the emulator, CuPy's
    XORWOW on a GPU, so streams differ between backends as CuPy's differ from NumPy's. The
    distributions are RandomState's (a GPU daemon's CuPy refuses those its Generator lacks)."""

    _kind = "random.generator"

    def random(self, size: Any = None, dtype: Any = float, out: Any = None) -> ndarray:
        if out is not None:
            from gpupool.cupy._support import unsupported

            unsupported("cupy.random.Generator.random with out=")
        return self._sample("random", size, _float_dtype(dtype))

    def standard_normal(self, size: Any = None, dtype: Any = float, out: Any = None) -> ndarray:
        if out is not None:
            from gpupool.cupy._support import unsupported

            unsupported("cupy.random.Generator.standard_normal with out=")
        return self._sample("standard_normal", size, _float_dtype(dtype))

    def integers(
        self,
        low: int,
        high: int | None = None,
        size: Any = None,
        dtype: Any = np.int64,
        endpoint: bool = False,
    ) -> ndarray:
        """Integers in ``[low, high)`` (``[low, high]`` with ``endpoint``; ``[0, low)`` without
        ``high``)."""
        if high is None:
            low, high = 0, low
        low, high = operator.index(low), operator.index(high)
        if low > high - (0 if endpoint else 1):
            raise ValueError("low >= high" if not endpoint else "low > high")
        dtype = np.dtype(dtype)
        if dtype.kind not in "iu":
            raise TypeError(f"Unsupported dtype {dtype} for integers")
        return self._sample("integers", size, dtype, (low, high), endpoint=endpoint)


def default_rng(seed: Any = None) -> Generator:
    """A new ``Generator`` on the current device (``seed`` an int, or None for the OS's)."""
    if isinstance(seed, Generator):
        return seed
    return Generator(seed)


for _method in _DISTRIBUTIONS:
    setattr(RandomState, _method, _distribution(_method))
    setattr(Generator, _method, _distribution(_method))
setattr(Generator, "normal", RandomState.normal)  # noqa: B010
setattr(Generator, "uniform", RandomState.uniform)  # noqa: B010
setattr(Generator, "choice", RandomState.choice)  # noqa: B010


def _module_function(method: str) -> Any:
    def sample(*args: Any, **kwargs: Any) -> ndarray:
        return getattr(get_random_state(), method)(*args, **kwargs)  # a constant name above

    sample.__name__ = method
    return sample


def _release(session: Session, handle: int) -> None:
    """Drop a collected RandomState's generator on the daemon (queued: no round trip)."""
    op = pb.ArrayOp(function="random.release", generator=handle)
    try:
        session.submit(pb.Request(array_op=op))
    except GpupoolError:
        pass  # the session has ended, and its generators with it


# The default generator of each device, per session: a new connection starts fresh ones.
_default_states: weakref.WeakKeyDictionary[Session, RandomState] = weakref.WeakKeyDictionary()


def get_random_state() -> RandomState:
    """The current device's default generator (made, seeded from the OS, on first use)."""
    session = context.current().session()
    state = _default_states.get(session)
    if state is None:
        state = _default_states[session] = RandomState()
    return state


def set_random_state(rs: RandomState) -> None:
    _default_states[context.current().session()] = rs


def seed(seed: Any = None) -> None:
    get_random_state().seed(seed)


def rand(*size: int, dtype: Any = float) -> ndarray:
    return get_random_state().rand(*size, dtype=dtype)


def randn(*size: int, dtype: Any = float) -> ndarray:
    return get_random_state().randn(*size, dtype=dtype)


def random_sample(size: Any = None, dtype: Any = float) -> ndarray:
    return get_random_state().random_sample(size, dtype)


random = random_sample


def standard_normal(size: Any = None, dtype: Any = float) -> ndarray:
    return get_random_state().standard_normal(size, dtype)


def normal(loc: float = 0.0, scale: float = 1.0, size: Any = None, dtype: Any = float) -> ndarray:
    return get_random_state().normal(loc, scale, size, dtype)


def uniform(low: float = 0.0, high: float = 1.0, size: Any = None, dtype: Any = float) -> ndarray:
    return get_random_state().uniform(low, high, size, dtype)


def randint(low: int, high: int | None = None, size: Any = None, dtype: Any = int) -> ndarray:
    return get_random_state().randint(low, high, size, dtype)


def choice(a: Any, size: Any = None, replace: bool = True, p: Any = None) -> ndarray:
    return get_random_state().choice(a, size, replace, p)


for _method in _DISTRIBUTIONS:
    globals()[_method] = _module_function(_method)
