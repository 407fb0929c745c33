"""``cupy.linalg``: norms, solves, factorisations and decompositions, computed on the daemon."""

from __future__ import annotations

import operator
from typing import Any

import numpy as np

from gpupool import arrayshapes
from gpupool.cupy import _remote
from gpupool.cupy._infer import (
    check_arrays,
    compute,
    infer,
    reduced_shape,
    result_array,
    stand_in,
)
from gpupool.cupy._ndarray import ndarray
from gpupool.cupy._support import module_getattr, unsupported

__getattr__ = module_getattr(__name__)


def norm(x: ndarray, ord: Any = None, axis: Any = None, keepdims: bool = False) -> ndarray:
    """A vector or matrix norm, as ``numpy.linalg.norm``."""
    check_arrays("linalg.norm", x)
    options = {key: value for key, value in (("ord", ord), ("axis", axis)) if value is not None}
    dtype = infer(np.linalg.norm, stand_in(x), keepdims=keepdims, **options)
    shape = reduced_shape(x.shape, axis, keepdims)
    return compute("linalg.norm", (x,), shape, dtype, {**options, "keepdims": keepdims})


def _square(name: str, a: ndarray) -> None:
    check_arrays(f"linalg.{name}", a)
    if a.ndim < 2:
        raise np.linalg.LinAlgError(
            f"{a.ndim}-dimensional array given. Array must be at least two-dimensional"
        )
    if a.shape[-1] != a.shape[-2]:
        raise np.linalg.LinAlgError("Last 2 dimensions of the array must be square")


def inv(a: ndarray) -> ndarray:
    """The inverse of a square matrix (or of each in a stack)."""
    _square("inv", a)
    return compute("linalg.inv", (a,), a.shape, infer(np.linalg.inv, np.ones((1, 1), a.dtype)))


def det(a: ndarray) -> ndarray:
    """The determinant of a square matrix (or of each in a stack)."""
    _square("det", a)
    dtype = infer(np.linalg.det, np.ones((1, 1), a.dtype))
    return compute("linalg.det", (a,), a.shape[:-2], dtype)


def solve(a: ndarray, b: ndarray) -> ndarray:
    """The solution ``x`` of ``a @ x = b`` for a square ``a`` (a singular ``a`` raises
    ``numpy.linalg.LinAlgError`` on the emulator; CuPy on a GPU returns non-finite values)."""
    check_arrays("linalg.solve", b)
    _square("solve", a)
    if a.ndim != 2 or b.ndim not in (1, 2):
        unsupported("cupy.linalg.solve of stacked matrices")
    if b.shape[0] != a.shape[0]:
        raise ValueError(
            f"solve: Input operand 1 has a mismatch in its core dimension 0 (size {b.shape[0]}"
            f" is different from {a.shape[0]})"
        )
    dtype = infer(np.linalg.solve, np.ones((1, 1), a.dtype), np.ones((1,) * b.ndim, b.dtype))
    return compute("linalg.solve", (a, b), b.shape, dtype)


def _matrices(name: str, a: ndarray) -> None:
    check_arrays(f"linalg.{name}", a)
    if a.ndim < 2:
        raise np.linalg.LinAlgError(
            f"{a.ndim}-dimensional array given. Array must be at least two-dimensional"
        )


def _float_dtype(a: ndarray) -> np.dtype:
    """The dtype LAPACK works in for ``a`` (ints and bools as float64, as NumPy and CuPy)."""
    return np.dtype(np.float64) if a.dtype.kind in "biu" else a.dtype


def _real(dtype: np.dtype) -> np.dtype:
    return np.empty(0, dtype).real.dtype


def cholesky(a: ndarray) -> ndarray:
    """The lower-triangular ``L`` with ``L @ L.H == a``."""
    _square("cholesky", a)
    return compute("linalg.cholesky", (a,), a.shape, _float_dtype(a))


def qr(a: ndarray, mode: str = "reduced") -> Any:
    """The QR factorisation (``mode`` 'reduced', 'complete' or 'r')."""
    _matrices("qr", a)
    if mode not in ("reduced", "complete", "r"):
        raise ValueError(f"Unrecognized mode {mode!r}")
    shapes = arrayshapes.qr_shapes(a.shape, mode)
    dtype = _float_dtype(a)
    outs = tuple(result_array("linalg.qr", a.device_id, shape, dtype) for shape in shapes)
    _remote.enqueue("linalg.qr", a.device_id, (a,), {"mode": mode}, outs)
    return outs[0] if mode == "r" else outs


def svd(
    a: ndarray, full_matrices: bool = True, compute_uv: bool = True, hermitian: bool = False
) -> Any:
    """The singular value decomposition ``u, s, vh`` (``s`` alone without ``compute_uv``)."""
    _matrices("svd", a)
    dtype = _float_dtype(a)
    u_shape, s_shape, vh_shape = arrayshapes.svd_shapes(a.shape, full_matrices)
    device = a.device_id
    if not compute_uv:
        return compute("linalg.svd", (a,), s_shape, _real(dtype), {"compute_uv": False})
    outs = (
        result_array("linalg.svd", device, u_shape, dtype),
        result_array("linalg.svd", device, s_shape, _real(dtype)),
        result_array("linalg.svd", device, vh_shape, dtype),
    )
    _remote.enqueue("linalg.svd", device, (a,), {"full_matrices": full_matrices}, outs)
    return outs


def eigh(a: ndarray, UPLO: str = "L") -> tuple[ndarray, ndarray]:
    """Eigenvalues (ascending) and eigenvectors of a Hermitian matrix."""
    _square("eigh", a)
    if UPLO not in ("L", "U"):
        raise ValueError("UPLO argument must be 'L' or 'U'")
    dtype = _float_dtype(a)
    outs = (
        result_array("linalg.eigh", a.device_id, a.shape[:-1], _real(dtype)),
        result_array("linalg.eigh", a.device_id, a.shape, dtype),
    )
    _remote.enqueue("linalg.eigh", a.device_id, (a,), {"UPLO": UPLO}, outs)
    return outs


def eigvalsh(a: ndarray, UPLO: str = "L") -> ndarray:
    _square("eigvalsh", a)
    if UPLO not in ("L", "U"):
        raise ValueError("UPLO argument must be 'L' or 'U'")
    dtype = _real(_float_dtype(a))
    return compute("linalg.eigvalsh", (a,), a.shape[:-1], dtype, {"UPLO": UPLO})


def slogdet(a: ndarray) -> tuple[ndarray, ndarray]:
    """The sign and the natural log of the absolute value of the determinant."""
    _square("slogdet", a)
    dtype = _float_dtype(a)
    outs = (
        result_array("linalg.slogdet", a.device_id, a.shape[:-2], dtype),
        result_array("linalg.slogdet", a.device_id, a.shape[:-2], _real(dtype)),
    )
    _remote.enqueue("linalg.slogdet", a.device_id, (a,), None, outs)
    return outs


def pinv(a: ndarray, rcond: float = 1e-15, hermitian: bool = False) -> ndarray:
    """The Moore-Penrose pseudo-inverse."""
    _matrices("pinv", a)
    shape = (*a.shape[:-2], a.shape[-1], a.shape[-2])
    return compute("linalg.pinv", (a,), shape, _float_dtype(a), {"rcond": rcond})


def matrix_power(a: ndarray, n: int) -> ndarray:
    """``a`` multiplied by itself ``n`` times (the inverse's powers for a negative ``n``)."""
    _square("matrix_power", a)
    n = operator.index(n)
    dtype = a.dtype if n >= 0 else _float_dtype(a)
    return compute("linalg.matrix_power", (a, n), a.shape, dtype)


def matrix_rank(A: ndarray, tol: Any = None, hermitian: bool = False) -> ndarray:
    """The number of singular values above ``tol`` (NumPy's default tolerance)."""
    check_arrays("linalg.matrix_rank", A)
    shape = A.shape[:-2] if A.ndim >= 2 else ()
    options = {} if tol is None else {"tol": tol}
    return compute("linalg.matrix_rank", (A,), shape, np.dtype(np.intp), options)


def cond(x: ndarray, p: Any = None) -> ndarray:
    """The condition number (2-norm by default, or the norm ``p`` names)."""
    _matrices("cond", x)
    if p is not None and p not in (1, -1, 2, -2, np.inf, -np.inf, "fro", "nuc"):
        raise ValueError("Invalid norm order for matrices.")
    options = {} if p is None else {"p": p}
    dtype = _real(_float_dtype(x))
    return compute("linalg.cond", (x,), x.shape[:-2], dtype, options)


def lstsq(a: ndarray, b: ndarray, rcond: Any = None) -> tuple[ndarray, ndarray, ndarray, ndarray]:
    """The least-squares solution of ``a @ x = b``, its residuals, ``a``'s rank and singular
    values. The residuals are there only for a full rank and more rows than columns, which
    the rank tells: one synchronizing call, as CuPy makes."""
    check_arrays("linalg.lstsq", a, b)
    if a.ndim != 2:
        raise np.linalg.LinAlgError(
            f"{a.ndim}-dimensional array given. Array must be two-dimensional"
        )
    if b.ndim not in (1, 2):
        raise np.linalg.LinAlgError(
            f"{b.ndim}-dimensional array given. Array must be one or two-dimensional"
        )
    m, n = a.shape
    if b.shape[0] != m:
        raise np.linalg.LinAlgError("Incompatible dimensions")
    dtype = np.result_type(_float_dtype(a), _float_dtype(b))
    columns = b.shape[1:]
    device = a.device_id
    outs = (
        result_array("linalg.lstsq", device, (n, *columns), dtype),
        result_array("linalg.lstsq", device, columns or (1,), _real(dtype)),
        result_array("linalg.lstsq", device, (), np.dtype(np.int32)),
        result_array("linalg.lstsq", device, (min(m, n),), _real(dtype)),
    )
    options = {} if rcond is None else {"rcond": rcond}
    _remote.enqueue("linalg.lstsq", device, (a, b), options, outs)
    solution, residuals, rank, singular = outs
    if not (int(rank) == n and m > n):  # a synchronizing call
        from gpupool.cupy._creation import empty

        with _remote.on_device(device):
            residuals = empty((0,), _real(dtype))
    return solution, residuals, rank, singular
