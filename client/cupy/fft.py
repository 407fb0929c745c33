"""``cupy.fft``: discrete Fourier transforms, computed on the daemon (cuFFT through CuPy on a
GPU, NumPy's pocketfft on the emulator).

Result shapes come from ``gpupool.arrayshapes.fft_shape`` (the daemon checks the same before
computing); single precision stays single, as in CuPy and NumPy 2. ``fftfreq``,
``rfftfreq``, ``fftshift`` and ``ifftshift`` are made of other operations.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

import numpy as np

from gpupool import arrayshapes
from gpupool.cupy._infer import check_arrays, compute
from gpupool.cupy._ndarray import ndarray
from gpupool.cupy._support import module_getattr
from gpupool.cupy._ufuncs import multiply

__getattr__ = module_getattr(__name__)

_NORMS = (None, "backward", "ortho", "forward")


def _complex(dtype: np.dtype) -> np.dtype:
    return (
        np.dtype(np.complex64)
        if dtype in (np.float32, np.complex64, np.float16)
        else (np.dtype(np.complex128))
    )


def _real(dtype: np.dtype) -> np.dtype:
    return np.dtype(np.float32) if _complex(dtype) == np.complex64 else np.dtype(np.float64)


def _transform(
    name: str,
    a: Any,
    n: Any = None,
    axis: Any = None,
    s: Any = None,
    axes: Any = None,
    norm: Any = None,
) -> ndarray:
    check_arrays(f"fft.{name}", a)
    if norm not in _NORMS:
        raise ValueError(f'Invalid norm value {norm}; should be "backward", "ortho" or "forward".')
    if a.ndim == 0:
        raise IndexError("tuple index out of range")
    if s is not None:
        s = tuple(operator.index(each) for each in s)
    if axes is not None:
        axes = (
            tuple(operator.index(each) for each in axes)
            if isinstance(axes, Sequence)
            else (operator.index(axes),)
        )
    if n is not None:
        n = operator.index(n)
    shape = arrayshapes.fft_shape(name, a.shape, n, axis, s, axes)
    real_result = name.startswith("irfft") or name == "hfft"
    dtype = _real(a.dtype) if real_result else _complex(a.dtype)
    options = {"n": n, "axis": axis, "s": s, "axes": axes, "norm": norm}
    options = {key: value for key, value in options.items() if value is not None}
    return compute(f"fft.{name}", (a,), shape, dtype, options)


def fft(a: Any, n: Any = None, axis: int = -1, norm: Any = None) -> ndarray:
    return _transform("fft", a, n, axis, norm=norm)


def ifft(a: Any, n: Any = None, axis: int = -1, norm: Any = None) -> ndarray:
    return _transform("ifft", a, n, axis, norm=norm)


def rfft(a: Any, n: Any = None, axis: int = -1, norm: Any = None) -> ndarray:
    return _transform("rfft", a, n, axis, norm=norm)


def irfft(a: Any, n: Any = None, axis: int = -1, norm: Any = None) -> ndarray:
    return _transform("irfft", a, n, axis, norm=norm)


def hfft(a: Any, n: Any = None, axis: int = -1, norm: Any = None) -> ndarray:
    return _transform("hfft", a, n, axis, norm=norm)


def ihfft(a: Any, n: Any = None, axis: int = -1, norm: Any = None) -> ndarray:
    return _transform("ihfft", a, n, axis, norm=norm)


def fft2(a: Any, s: Any = None, axes: Any = (-2, -1), norm: Any = None) -> ndarray:
    return _transform("fft2", a, s=s, axes=axes, norm=norm)


def ifft2(a: Any, s: Any = None, axes: Any = (-2, -1), norm: Any = None) -> ndarray:
    return _transform("ifft2", a, s=s, axes=axes, norm=norm)


def rfft2(a: Any, s: Any = None, axes: Any = (-2, -1), norm: Any = None) -> ndarray:
    return _transform("rfft2", a, s=s, axes=axes, norm=norm)


def irfft2(a: Any, s: Any = None, axes: Any = (-2, -1), norm: Any = None) -> ndarray:
    return _transform("irfft2", a, s=s, axes=axes, norm=norm)


def fftn(a: Any, s: Any = None, axes: Any = None, norm: Any = None) -> ndarray:
    return _transform("fftn", a, s=s, axes=axes, norm=norm)


def ifftn(a: Any, s: Any = None, axes: Any = None, norm: Any = None) -> ndarray:
    return _transform("ifftn", a, s=s, axes=axes, norm=norm)


def rfftn(a: Any, s: Any = None, axes: Any = None, norm: Any = None) -> ndarray:
    return _transform("rfftn", a, s=s, axes=axes, norm=norm)


def irfftn(a: Any, s: Any = None, axes: Any = None, norm: Any = None) -> ndarray:
    return _transform("irfftn", a, s=s, axes=axes, norm=norm)


def fftfreq(n: int, d: float = 1.0, *, dtype: Any = None) -> ndarray:
    """The sample frequencies of an ``n``-point transform with sample spacing ``d``."""
    from gpupool.cupy._creation import arange
    from gpupool.cupy._manipulation import concatenate

    n = operator.index(n)
    positive = arange(0, (n - 1) // 2 + 1, dtype=np.int64)
    negative = arange(-(n // 2), 0, dtype=np.int64)
    result = multiply(concatenate([positive, negative]), 1.0 / (n * d))
    return result if dtype is None else result.astype(dtype)


def rfftfreq(n: int, d: float = 1.0, *, dtype: Any = None) -> ndarray:
    from gpupool.cupy._creation import arange

    n = operator.index(n)
    result = multiply(arange(0, n // 2 + 1, dtype=np.int64), 1.0 / (n * d))
    return result if dtype is None else result.astype(dtype)


def _shift(x: Any, axes: Any, sign: int) -> ndarray:
    from gpupool.cupy._math import roll

    check_arrays("fft.fftshift", x)
    axes = tuple(range(x.ndim)) if axes is None else axes
    axes = (axes,) if isinstance(axes, int) else tuple(axes)
    shifts = tuple(sign * (x.shape[ax] // 2) if sign > 0 else -(x.shape[ax] // 2) for ax in axes)
    return roll(x, shifts, axes)


def fftshift(x: Any, axes: Any = None) -> ndarray:
    """The zero frequency moved to the middle."""
    return _shift(x, axes, 1)


def ifftshift(x: Any, axes: Any = None) -> ndarray:
    """``fftshift`` undone."""
    return _shift(x, axes, -1)
