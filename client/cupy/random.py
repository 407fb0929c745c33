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


class RandomState:
    """A generator on the current device; ``seed`` as in CuPy (None: from the OS)."""

    def __init__(self, seed: Any = None, method: Any = None) -> None:
        self._device = runtime.getDevice()
        self._handle = new_handle()
        self.seed(seed)
        session = context.current().session(self._device)
        weakref.finalize(self, _release, session, self._handle).atexit = False

    def seed(self, seed: Any = None) -> None:
        if seed is not None:
            seed = int(np.asarray(seed).astype(np.uint64))  # CuPy's conversion
        _remote.enqueue("random.seed", self._device, (seed,), generator=self._handle)

    def _sample(
        self, method: str, size: Any, dtype: Any, params: tuple[Any, ...] = (), **kwargs: Any
    ) -> ndarray:
        with _remote.on_device(self._device):
            out = ndarray(_size(size), dtype)
        _remote.enqueue(
            f"random.{method}", self._device, params, kwargs, (out,), generator=self._handle
        )
        return out

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
        params = (_scalar("normal", loc), _scalar("normal", scale))
        return self._sample("normal", size, _float_dtype(dtype), params)

    def uniform(
        self, low: float = 0.0, high: float = 1.0, size: Any = None, dtype: Any = float
    ) -> ndarray:
        params = (_scalar("uniform", low), _scalar("uniform", high))
        return self._sample("uniform", size, _float_dtype(dtype), params)

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
