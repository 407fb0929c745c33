"""CuPy's wider API through the shim (statistics, searching, sets, FFT, linear algebra,
differences and products) against NumPy, on real daemons: each case is written once and run
with ``xp`` as NumPy and as ``gpupool.cupy``; results (arrays, tuples and lists of them)
must agree in shape, dtype and values.

One connection a module (the default transport): the transports are covered elsewhere, and
these cases are about the functions.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

import gpupool
import gpupool.cupy as cp
from gpupool.errors import CUDARuntimeError
from gpupool.server.daemon import Daemon

RNG = np.random.default_rng(11)
A = RNG.standard_normal((5, 6))
V = RNG.standard_normal(7)
INTS = RNG.integers(0, 9, 20)
S = np.sort(RNG.standard_normal(10))
SQ = RNG.standard_normal((4, 4))
SPD = SQ @ SQ.T + 4 * np.eye(4)
WITH_NAN = np.where(RNG.random((4, 5)) < 0.3, np.nan, RNG.standard_normal((4, 5)))


@pytest.fixture(scope="module")
def shim(daemon: Daemon) -> Iterator[None]:
    gpupool.connect(daemon.address)
    yield
    gc.collect()
    gpupool.disconnect()


def put(xp: Any, value: np.ndarray) -> Any:
    return xp.asarray(value) if xp is cp else value


def host(value: Any) -> Any:
    if isinstance(value, cp.ndarray):
        return value.get()
    if isinstance(value, tuple | list):
        return type(value)(host(each) for each in value)
    return value


def agree(got: Any, expected: Any, rtol: float = 1e-10, atol: float = 1e-12) -> None:
    if isinstance(expected, tuple | list):
        assert isinstance(got, tuple | list) and len(got) == len(expected), (got, expected)
        for g, e in zip(got, expected, strict=True):
            agree(g, e, rtol, atol)
        return
    got, expected = np.asarray(got), np.asarray(expected)
    assert got.shape == expected.shape, (got.shape, expected.shape)
    assert got.dtype == expected.dtype, (got.dtype, expected.dtype)
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=atol, equal_nan=True)


CASES: dict[str, Callable[[Any], Any]] = {
    "gradient": lambda xp: xp.gradient(put(xp, A)),
    "gradient axis spacing": lambda xp: xp.gradient(put(xp, A), 0.5, axis=1, edge_order=2),
    "gradient coordinates": lambda xp: xp.gradient(put(xp, V), put(xp, np.cumsum(V**2))),
    "isin": lambda xp: xp.isin(put(xp, INTS), put(xp, np.array([1, 3, 5]))),
    "isin invert": lambda xp: xp.isin(put(xp, INTS), put(xp, np.array([2])), invert=True),
    "quantile": lambda xp: xp.quantile(put(xp, A), 0.3),
    "quantile axis q array": lambda xp: xp.quantile(
        put(xp, A), put(xp, np.array([0.1, 0.9])), axis=1, keepdims=True
    ),
    "percentile method": lambda xp: xp.percentile(put(xp, A), 40, axis=0, method="nearest"),
    "median": lambda xp: xp.median(put(xp, A), axis=1),
    "median ints": lambda xp: xp.median(put(xp, INTS)),
    "nanmedian": lambda xp: xp.nanmedian(put(xp, WITH_NAN), axis=0),
    "nanmean": lambda xp: xp.nanmean(put(xp, WITH_NAN), axis=1),
    "nanvar": lambda xp: xp.nanvar(put(xp, WITH_NAN), ddof=1),
    "nanstd": lambda xp: xp.nanstd(put(xp, WITH_NAN), axis=0),
    "nansum": lambda xp: xp.nansum(put(xp, WITH_NAN), axis=1, keepdims=True),
    "nanmax": lambda xp: xp.nanmax(put(xp, WITH_NAN)),
    "nanargmin": lambda xp: xp.nanargmin(put(xp, WITH_NAN), axis=1),
    "nancumsum": lambda xp: xp.nancumsum(put(xp, WITH_NAN), axis=0),
    "ptp": lambda xp: xp.ptp(put(xp, A), axis=0),
    "cumulative_sum": lambda xp: xp.cumulative_sum(put(xp, A), axis=1, include_initial=True),
    "cumulative_prod": lambda xp: xp.cumulative_prod(put(xp, V)),
    "searchsorted": lambda xp: xp.searchsorted(put(xp, S), put(xp, V)),
    "searchsorted right scalar": lambda xp: xp.searchsorted(put(xp, S), 0.0, side="right"),
    "searchsorted method": lambda xp: put(xp, S).searchsorted(put(xp, V[:3])),
    "convolve": lambda xp: xp.convolve(put(xp, V), put(xp, V[:3])),
    "convolve same": lambda xp: xp.convolve(put(xp, V), put(xp, V[:3]), mode="same"),
    "correlate": lambda xp: xp.correlate(put(xp, V), put(xp, V[:4])),
    "vander": lambda xp: xp.vander(put(xp, V[:4]), 3, increasing=True),
    "vander ints": lambda xp: xp.vander(put(xp, INTS[:5])),
    "float_power": lambda xp: xp.float_power(put(xp, INTS), 0.5),
    "logaddexp": lambda xp: xp.logaddexp(put(xp, A), 1.0),
    "frexp": lambda xp: xp.frexp(put(xp, V)),
    "gcd": lambda xp: xp.gcd(put(xp, INTS), 6),
    "kron": lambda xp: xp.kron(put(xp, SQ[:2, :3]), put(xp, SQ[:3, :2])),
    "diag vector": lambda xp: xp.diag(put(xp, V[:3]), k=1),
    "diag matrix": lambda xp: xp.diag(put(xp, A), -1),
    "diagflat": lambda xp: xp.diagflat(put(xp, SQ[:2, :2])),
    "tril": lambda xp: xp.tril(put(xp, A), -1),
    "triu": lambda xp: xp.triu(put(xp, A), 2),
    "tri": lambda xp: xp.tri(3, 4, 1),
    "nan_to_num": lambda xp: xp.nan_to_num(put(xp, WITH_NAN), nan=-1.0),
    "roll": lambda xp: xp.roll(put(xp, A), 2, axis=1),
    "roll flat": lambda xp: xp.roll(put(xp, A), -3),
    "diff": lambda xp: xp.diff(put(xp, A), 2, axis=0),
    "diff prepend": lambda xp: xp.diff(put(xp, V), prepend=0.0, append=put(xp, V[:2])),
    "interp": lambda xp: xp.interp(put(xp, V), put(xp, S), put(xp, S**2)),
    "tensordot": lambda xp: xp.tensordot(put(xp, A), put(xp, A.T), axes=1),
    "tensordot lists": lambda xp: xp.tensordot(put(xp, A), put(xp, A), axes=([0, 1], [0, 1])),
    "einsum": lambda xp: xp.einsum("ij,jk->ik", put(xp, A), put(xp, A.T)),
    "einsum implicit trace": lambda xp: xp.einsum("ii", put(xp, SQ)),
    "einsum ellipsis": lambda xp: xp.einsum("...i,...i->...", put(xp, A), put(xp, A)),
    "meshgrid": lambda xp: xp.meshgrid(put(xp, V[:3]), put(xp, V[:2])),
    "meshgrid ij sparse": lambda xp: xp.meshgrid(
        put(xp, V[:3]), put(xp, V[:2]), indexing="ij", sparse=True
    ),
    "broadcast_arrays": lambda xp: xp.broadcast_arrays(put(xp, V[:3]), put(xp, A[:2, :1])),
    "partition kth": lambda xp: xp.partition(put(xp, V), 3)[3],
    "argpartition kth": lambda xp: put(xp, V)[xp.argpartition(put(xp, V), 2)[2]],
    "nonzero": lambda xp: xp.nonzero(put(xp, INTS.reshape(4, 5) > 4)),
    "where one argument": lambda xp: xp.where(put(xp, INTS) == 3),
    "flatnonzero": lambda xp: xp.flatnonzero(put(xp, INTS)),
    "argwhere": lambda xp: xp.argwhere(put(xp, INTS.reshape(4, 5) < 2)),
    "unique": lambda xp: xp.unique(put(xp, INTS)),
    "unique everything": lambda xp: xp.unique(
        put(xp, INTS.reshape(4, 5)), return_index=True, return_inverse=True, return_counts=True
    ),
    "unique rows": lambda xp: xp.unique(put(xp, np.array([[1, 2], [3, 4], [1, 2]])), axis=0),
    "union1d": lambda xp: xp.union1d(put(xp, INTS[:5]), put(xp, INTS[5:9])),
    "intersect1d": lambda xp: xp.intersect1d(put(xp, INTS[:10]), put(xp, INTS[10:])),
    "setdiff1d": lambda xp: xp.setdiff1d(put(xp, INTS[:10]), put(xp, INTS[10:])),
    "setxor1d": lambda xp: xp.setxor1d(put(xp, INTS[:10]), put(xp, INTS[10:])),
    "bincount": lambda xp: xp.bincount(put(xp, INTS)),
    "bincount weights": lambda xp: xp.bincount(put(xp, INTS), put(xp, np.linspace(0, 1, 20)), 12),
    "histogram": lambda xp: xp.histogram(put(xp, V), bins=4),
    "histogram range": lambda xp: xp.histogram(put(xp, V), 3, range=(-1, 1)),
    "histogram edges": lambda xp: xp.histogram(put(xp, V), bins=put(xp, S[::3])),
    "digitize": lambda xp: xp.digitize(put(xp, V), put(xp, S)),
    "argsort stable": lambda xp: xp.argsort(put(xp, INTS), kind="stable"),
    "view dtype": lambda xp: put(xp, A).view(np.int64),
    "view smaller dtype": lambda xp: put(xp, A.astype(np.float32)).view(np.uint8),
    "linalg.cholesky": lambda xp: xp.linalg.cholesky(put(xp, SPD)),
    "linalg.qr r": lambda xp: xp.abs(xp.linalg.qr(put(xp, A), mode="r")),
    "linalg.svd values": lambda xp: xp.linalg.svd(put(xp, A), compute_uv=False),
    "linalg.eigvalsh": lambda xp: xp.linalg.eigvalsh(put(xp, SPD)),
    "linalg.slogdet": lambda xp: xp.linalg.slogdet(put(xp, SQ)),
    "linalg.pinv": lambda xp: xp.linalg.pinv(put(xp, A)),
    "linalg.matrix_power": lambda xp: xp.linalg.matrix_power(put(xp, SQ), 3),
    "linalg.matrix_power inverse": lambda xp: xp.linalg.matrix_power(put(xp, SPD), -2),
    "linalg.matrix_rank": lambda xp: xp.linalg.matrix_rank(put(xp, A)),
    "linalg.cond": lambda xp: xp.linalg.cond(put(xp, SPD)),
    "linalg.cond fro": lambda xp: xp.linalg.cond(put(xp, SPD), "fro"),
    "linalg.lstsq": lambda xp: xp.linalg.lstsq(put(xp, A), put(xp, A[:, :2]), rcond=None),
    "linalg.lstsq vector": lambda xp: xp.linalg.lstsq(put(xp, A), put(xp, A[:, 0]), rcond=None),
    "fft.fft": lambda xp: xp.fft.fft(put(xp, V)),
    "fft.fft n": lambda xp: xp.fft.fft(put(xp, A), n=8, axis=0),
    "fft.ifft float32": lambda xp: xp.fft.ifft(put(xp, V.astype(np.float32))),
    "fft.rfft": lambda xp: xp.fft.rfft(put(xp, V)),
    "fft.irfft": lambda xp: xp.fft.irfft(put(xp, np.fft.rfft(V)), n=7),
    "fft.fft2": lambda xp: xp.fft.fft2(put(xp, A), norm="ortho"),
    "fft.rfftn": lambda xp: xp.fft.rfftn(put(xp, A), s=(4, 4), axes=(0, 1)),
    "fft.irfftn": lambda xp: xp.fft.irfftn(put(xp, np.fft.rfftn(A))),
    "fft.hfft": lambda xp: xp.fft.hfft(put(xp, V[:4] + 1j)),
    "fft.fftfreq": lambda xp: xp.fft.fftfreq(7, 0.5),
    "fft.rfftfreq": lambda xp: xp.fft.rfftfreq(8),
    "fft.fftshift": lambda xp: xp.fft.fftshift(put(xp, A)),
    "fft.ifftshift": lambda xp: xp.fft.ifftshift(put(xp, A), axes=1),
}


@pytest.mark.parametrize("case", list(CASES))
def test_function_matches_numpy(shim: None, case: str) -> None:
    expected = CASES[case](np)
    got = host(CASES[case](cp))
    agree(got, expected, rtol=1e-9 if "fft" in case or "linalg" in case else 1e-10, atol=1e-9)


def test_decompositions_rebuild_their_matrix(shim: None) -> None:
    """Factors are unique only up to signs: check what they are for, against the input."""
    a = cp.asarray(A)
    u, s, vh = cp.linalg.svd(a, full_matrices=False)
    np.testing.assert_allclose((u.get() * s.get()) @ vh.get(), A, atol=1e-10)
    u, s, vh = cp.linalg.svd(a)
    assert (u.shape, s.shape, vh.shape) == ((5, 5), (5,), (6, 6))
    q, r = cp.linalg.qr(a)
    np.testing.assert_allclose(q.get() @ r.get(), A, atol=1e-10)
    q, r = cp.linalg.qr(cp.asarray(A.T), mode="complete")
    assert (q.shape, r.shape) == ((6, 6), (6, 5))
    w, v = cp.linalg.eigh(cp.asarray(SPD))
    np.testing.assert_allclose(v.get() @ np.diag(w.get()) @ v.get().T, SPD, atol=1e-10)


def test_partition_in_place_and_base(shim: None) -> None:
    x = cp.asarray(V)
    x.partition(4)
    got = x.get()
    assert got[4] == np.sort(V)[4]
    assert (got[:4] <= got[4]).all() and (got[5:] >= got[4]).all()
    assert x.base is None
    view = x[1:]
    assert view.base is x and view[1:].base is x


def test_data_sized_results_cost_one_round_trip_each(shim: None) -> None:
    x = cp.asarray(INTS)
    x.sum().get()
    before = gpupool.stats().round_trips
    cp.unique(x)
    cp.nonzero(x)
    assert gpupool.stats().round_trips - before == 2


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda: cp.gradient(cp.zeros(1)), ValueError),
        (lambda: cp.quantile(cp.zeros(3), 1.5), ValueError),
        (lambda: cp.percentile(cp.zeros(3), 50, method="guess"), ValueError),
        (lambda: cp.searchsorted(cp.zeros((2, 2)), 1.0), ValueError),
        (lambda: cp.convolve(cp.zeros(0), cp.zeros(2)), ValueError),
        (lambda: cp.einsum("ij,jk->il", cp.zeros((2, 2)), cp.zeros((2, 2))), ValueError),
        (lambda: cp.einsum("ij;", cp.zeros((2, 2))), ValueError),
        (lambda: cp.tensordot(cp.zeros((2, 3)), cp.zeros((2, 3)), 1), ValueError),
        (lambda: cp.nonzero(cp.zeros(())), ValueError),
        (lambda: cp.bincount(cp.asarray(np.array([-1, 2]))), ValueError),
        (lambda: cp.fft.fft(cp.zeros(4), norm="loud"), ValueError),
        (lambda: cp.linalg.cholesky(cp.zeros(3)), np.linalg.LinAlgError),
        (lambda: cp.zeros((2, 3)).view(np.complex128), ValueError),
    ],
)
def test_bad_arguments_raise_numpys_errors_at_once(shim: None, call: Any, error: type) -> None:
    with pytest.raises(error):
        call()


def test_a_non_positive_definite_matrix_fails_at_the_next_sync(shim: None) -> None:
    bad = cp.linalg.cholesky(cp.asarray(-np.eye(3)))
    with pytest.raises(np.linalg.LinAlgError):
        bad.get()
    assert float(cp.asarray(V).sum()) == pytest.approx(V.sum())  # the session goes on


# The daemon's own checks: a client may send any numbers, so results that arguments would
# blow up are refused before they are computed, and strings are held to their lists.


def _raw(function: str, args: tuple[Any, ...], kwargs: dict[str, Any], out: cp.ndarray) -> None:
    from gpupool.cupy import _remote

    _remote.enqueue(function, out.device_id, args, kwargs, (out,))


@pytest.mark.parametrize(
    ("function", "args", "kwargs"),
    [
        ("vander", lambda: (cp.zeros(4),), {"N": 10**12}),
        ("diag", lambda: (cp.zeros(4),), {"k": 10**9}),
        ("histogram", lambda: (cp.zeros(4),), {"bins": 10**12}),
        ("bincount", lambda: (cp.asarray(np.array([10**12])),), {}),
        ("kron", lambda: (cp.zeros(10**4), cp.zeros(10**4)), {}),
        ("fft.fft", lambda: (cp.zeros(4),), {"n": 10**12}),
        ("einsum", lambda: (cp.zeros(10**4), cp.zeros(10**4)), {"subscripts": "i,j->ij"}),
        ("quantile", lambda: (cp.zeros(10**4), cp.zeros(10**4)), {"axis": None}),
    ],
)
def test_results_bigger_than_their_outputs_are_refused_first(
    shim: None, function: str, args: Any, kwargs: dict[str, Any]
) -> None:
    out = cp.zeros(4)
    _raw(function, args(), kwargs, out)
    with pytest.raises(ValueError, match="does not fit"):
        out.get()


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"method": "__import__"}, "not accepted"),
        ({"subscripts": "i" * 300}, "invalid einsum"),
        ({"side": "middle"}, "not accepted"),
    ],
)
def test_text_keywords_take_only_their_words(
    shim: None, kwargs: dict[str, Any], error: str
) -> None:
    out = cp.zeros(())
    function = "einsum" if "subscripts" in kwargs else "quantile"
    _raw(function, (cp.zeros(3), 0.5) if function == "quantile" else (cp.zeros(3),), kwargs, out)
    with pytest.raises((ValueError, TypeError, CUDARuntimeError), match=error):
        out.get()


DISTRIBUTIONS = [
    ("binomial", (10, 0.3), 3.0, np.int64),
    ("poisson", (4.0,), 4.0, np.int64),
    ("exponential", (2.0,), 2.0, np.float64),
    ("gamma", (3.0, 2.0), 6.0, np.float64),
    ("beta", (2.0, 2.0), 0.5, np.float64),
    ("chisquare", (3.0,), 3.0, np.float64),
    ("geometric", (0.25,), 4.0, np.int64),
    ("laplace", (1.0, 0.5), 1.0, np.float64),
    ("lognormal", (0.0, 0.25), np.exp(0.25**2 / 2), np.float64),
    ("standard_exponential", (), 1.0, np.float64),
    ("triangular", (0.0, 1.0, 2.0), 1.0, np.float64),
    ("rayleigh", (1.0,), np.sqrt(np.pi / 2), np.float64),
]


@pytest.mark.parametrize(("method", "params", "mean", "dtype"), DISTRIBUTIONS)
def test_distributions_sample_on_the_daemon(
    shim: None, method: str, params: tuple[float, ...], mean: float, dtype: type
) -> None:
    state = cp.random.RandomState(5)
    samples = getattr(state, method)(*params, size=20000)
    assert samples.shape == (20000,) and samples.dtype == dtype
    assert abs(float(samples.mean()) - mean) < 0.05 * max(mean, 1.0)
    module_level = getattr(cp.random, method)(*params, size=(2, 3))
    assert module_level.shape == (2, 3)


def test_distribution_parameters_may_be_arrays(shim: None) -> None:
    state = cp.random.RandomState(1)
    lam = np.array([1.0, 10.0, 100.0])
    draws = state.poisson(cp.asarray(lam), size=(4000, 3))
    np.testing.assert_allclose(draws.mean(axis=0).get(), lam, rtol=0.1)
    assert state.normal(cp.asarray(lam), 0.0).get().tolist() == lam.tolist()  # size from loc
    with pytest.raises(TypeError, match="missing required argument 'n'"):
        state.binomial(p=0.5)


UFUNC_METHODS: dict[str, Callable[[Any], Any]] = {
    "add.reduce": lambda xp: xp.add.reduce(put(xp, A)),
    "multiply.reduce axis keepdims": lambda xp: xp.multiply.reduce(put(xp, A), 1, keepdims=True),
    "maximum.reduce all": lambda xp: xp.maximum.reduce(put(xp, A), axis=None),
    "add.accumulate": lambda xp: xp.add.accumulate(put(xp, A), axis=1),
    "subtract.outer": lambda xp: xp.subtract.outer(put(xp, V[:3]), put(xp, A[:2])),
    "greater big int": lambda xp: xp.greater(put(xp, INTS), 2**70),
    "less big negative int": lambda xp: put(xp, INTS) < -(2**80),
    "equal big int float": lambda xp: put(xp, V) == 2**65,
}


@pytest.mark.parametrize("case", list(UFUNC_METHODS))
def test_ufunc_methods_and_comparisons_match_numpy(shim: None, case: str) -> None:
    agree(host(UFUNC_METHODS[case](cp)), UFUNC_METHODS[case](np))


def test_ufunc_at_applies_repeated_indices_each_time(shim: None) -> None:
    expected = np.zeros(5)
    np.add.at(expected, [0, 1, 1, 4], 2.0)
    got = cp.zeros(5)
    cp.add.at(got, cp.asarray(np.array([0, 1, 1, 4])), 2.0)
    agree(got.get(), expected)
    cp.negative.at(got, cp.asarray(np.array([1])))
    expected[1] *= -1
    agree(got.get(), expected)
    cp.add.at(got, cp.asarray(np.array([7])), 1.0)  # out of bounds: refused, nothing written
    with pytest.raises(IndexError, match="out of bounds"):
        got.get()


class _Exposing:
    """Not a shim array, but exposing one's memory as CUDA programs pass memory around."""

    def __init__(self, array: cp.ndarray) -> None:
        self.__cuda_array_interface__ = array.__cuda_array_interface__
        self._keep = array


def test_arrays_exposing_the_cuda_array_interface_are_taken(shim: None) -> None:
    source = cp.asarray(A)
    view = cp.asarray(_Exposing(source))
    assert view.data.ptr == source.data.ptr and view.dtype == source.dtype
    agree(view.get(), A)
    agree(cp.array(_Exposing(source[:, ::2])).get(), A[:, ::2])
    agree(cp.asnumpy(_Exposing(source.T)), A.T)


def test_orders_byte_order_and_casting_warnings_follow_numpy(shim: None) -> None:
    a = cp.asarray(A, order=None)
    assert cp.array(A, order="f").flags.f_contiguous
    assert a.astype(np.float32, order="c").flags.c_contiguous
    assert cp.empty((2, 3), order="F").flags.f_contiguous
    swapped = cp.asarray(np.arange(4, dtype=">i4"))
    assert swapped.dtype == np.dtype("<i4") and swapped.get().tolist() == [0, 1, 2, 3]
    with pytest.warns(np.exceptions.ComplexWarning):
        cp.asarray(V + 1j).astype(np.float64)
    with pytest.raises(ValueError, match="avoid creating a copy"):
        a.T.reshape(-1, copy=False)
    assert a.reshape(30, copy=True).data.ptr != a.data.ptr


def test_runtime_versions_streams_and_allocators(shim: None) -> None:
    assert cp.cuda.runtime.driverGetVersion() >= cp.cuda.runtime.runtimeGetVersion() >= 12000
    handle = cp.cuda.runtime.streamCreate()
    external = cp.cuda.Stream.from_external(handle)
    with external:
        x = cp.arange(4) * 2
    external.synchronize()
    assert x.get().tolist() == [0, 2, 4, 6]
    assert cp.cuda.Stream.ptds is cp.cuda.Stream.ptds
    with cp.cuda.Stream.ptds:
        assert (cp.ones(3) + 1).get().tolist() == [2, 2, 2]
    pool = cp.cuda.MemoryPool()
    with cp.cuda.using_allocator(pool.malloc):
        y = cp.zeros(1000)
    assert pool.used_bytes() >= 8000
    del y


def test_generators_from_default_rng(shim: None) -> None:
    rng = cp.random.default_rng(42)
    assert cp.random.default_rng(rng) is rng
    floats = rng.random(20000, dtype=np.float32)
    assert floats.dtype == np.float32 and 0 <= float(floats.min()) and float(floats.max()) < 1
    ints = rng.integers(3, 7, size=5000, endpoint=True)
    assert ints.dtype == np.int64 and set(cp.asnumpy(ints).tolist()) == {3, 4, 5, 6, 7}
    assert abs(float(rng.standard_normal(20000).std()) - 1) < 0.05
    assert abs(float(rng.exponential(2.0, size=20000).mean()) - 2) < 0.1
    again = cp.random.default_rng(42).random(5, dtype=np.float32)
    assert cp.asnumpy(again).tolist() == cp.asnumpy(floats[:5]).tolist()  # seeded: reproducible
    from gpupool.cupy import _remote

    state = cp.random.RandomState(1)
    out = cp.zeros(3, np.int64)
    _remote.enqueue("random.integers", out.device_id, (0, 5), None, (out,), state._handle)
    with pytest.raises(TypeError, match="RandomState has no integers"):
        out.get()
