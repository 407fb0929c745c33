"""Regressions from an acceptance review of ``gpupool.cupy`` as CuPy programs use it.

Each test is a defect the review found: a wrong answer, a missing CuPy name that did not say
so, or a daemon request that was not refused as it should be. Real daemons, compared with
NumPy, as in ``test_cupy_arrays``.
"""

from __future__ import annotations

import copy
import gc
import pickle
from collections.abc import Iterator

import numpy as np
import pytest

import gpupool.cupy as cp
from gpupool.server.daemon import Daemon
from tests.conftest import require_devices


@pytest.fixture(autouse=True)
def _collect_before_disconnect(connected: Daemon) -> Iterator[None]:
    yield
    gc.collect()


def test_copy_and_deepcopy_copy_the_data(connected: Daemon) -> None:
    original = cp.arange(5)
    shallow, deep = copy.copy(original), copy.deepcopy({"w": original})["w"]
    original[0] = 7
    assert shallow.data.ptr != original.data.ptr != deep.data.ptr
    assert shallow.tolist() == deep.tolist() == [0, 1, 2, 3, 4]


def test_pickle_stores_the_host_copy(connected: Daemon) -> None:
    original = cp.arange(6.0).reshape(2, 3)[:, ::2]
    restored = pickle.loads(pickle.dumps(original))
    assert isinstance(restored, cp.ndarray)
    assert restored.data.ptr != original.data.ptr
    np.testing.assert_array_equal(restored.get(), np.arange(6.0).reshape(2, 3)[:, ::2])
    del restored
    gc.collect()
    assert original.sum().item() == 10.0  # still there: the copy freed only its own memory


def test_unsupported_ndarray_methods_raise_not_implemented_naming_them(
    connected: Daemon,
) -> None:
    array = cp.arange(3)
    for name in ("repeat", "take", "put", "compress", "choose"):
        with pytest.raises(NotImplementedError, match=rf"cupy\.ndarray\.{name} .*docs/cupy\.md"):
            getattr(array, name)
    assert not hasattr(array, "tobytes")
    with pytest.raises(AttributeError, match="_private"):
        array._private  # noqa: B018


def test_divmod_as_numpy(connected: Daemon) -> None:
    values = np.array([-7, -1, 0, 5, 9])
    quotient, remainder = divmod(cp.asarray(values), 3)
    np.testing.assert_array_equal(quotient.get(), values // 3)
    np.testing.assert_array_equal(remainder.get(), values % 3)
    quotient, remainder = divmod(10.5, cp.asarray([2.0, -3.0]))
    expected = divmod(10.5, np.array([2.0, -3.0]))
    np.testing.assert_array_equal(quotient.get(), expected[0])
    np.testing.assert_array_equal(remainder.get(), expected[1])
    assert cp.divmod(cp.arange(4), 2)[1].dtype == np.divmod(np.arange(4), 2)[1].dtype


def test_version_is_cupy_like() -> None:
    major = int(cp.__version__.split(".")[0])
    assert major >= 13


def test_an_empty_list_indexes_as_integers(connected: Daemon) -> None:
    values = np.arange(12.0).reshape(3, 4)
    for key in ([], (slice(None), [])):
        result = cp.asarray(values)[key]
        assert result.shape == values[key].shape
        assert result.dtype == values.dtype


def test_setting_shape_reshapes_in_place(connected: Daemon) -> None:
    array = cp.arange(6)
    array.shape = (2, 3)
    assert array.strides == (24, 8)
    np.testing.assert_array_equal((array * 1).get(), np.arange(6).reshape(2, 3))
    with pytest.raises(AttributeError, match="incompatible shape"):
        array.T.shape = (6,)  # no view of a transpose has it (NumPy's and CuPy's rule)
    with pytest.raises(AttributeError, match="incompatible shape"):
        array.shape = (4, 2)


def test_numpy_functions_the_shim_lacks_raise_not_implemented_naming_them(
    connected: Daemon,
) -> None:
    array = cp.arange(4.0)
    with pytest.raises(NotImplementedError, match=r"cupy\.pad "):
        np.pad(array, 1)
    with pytest.raises(NotImplementedError, match=r"cupy\.spacing "):
        np.spacing(array)
    with pytest.raises(NotImplementedError, match=r"cupy\.add\.reduce "):
        np.add.reduce(array)
    assert np.sum(array).item() == 6.0  # what the shim has still dispatches


def test_copy_and_array_move_an_array_to_the_current_device(connected: Daemon) -> None:
    require_devices(2)
    values = np.arange(12.0).reshape(3, 4)
    with cp.cuda.Device(1):
        remote = cp.asarray(values)
    here = cp.arange(4.0)
    moved, made, fortran = remote.copy(), cp.array(remote[:, ::2]), remote.copy(order="F")
    assert moved.device_id == made.device_id == fortran.device_id == 0
    assert cp.asarray(here) is here  # asarray copies nothing on the current device, as CuPy's
    brought = cp.asarray(remote)  # and moves an array of another device here, as CuPy's
    assert brought is not remote and brought.device_id == 0
    np.testing.assert_array_equal(brought.get(), values)
    np.testing.assert_array_equal((moved + here).get(), values + np.arange(4.0))
    np.testing.assert_array_equal(made.get(), values[:, ::2])
    assert fortran.flags.f_contiguous
    np.testing.assert_array_equal(fortran.get(), values)
    with pytest.raises(ValueError, match=r"x\.copy\(\)"):
        remote + here


def test_views_and_copies_of_an_array_on_another_device_stay_there(connected: Daemon) -> None:
    require_devices(2)
    with cp.cuda.Device(1):
        remote = cp.arange(12.0).reshape(3, 4)
    flat = remote.T.reshape(-1)  # no view has that shape: a copy, on the array's device
    assert flat.device_id == copy.copy(remote).device_id == copy.deepcopy(remote).device_id == 1
    np.testing.assert_array_equal(flat.get(), np.arange(12.0).reshape(3, 4).T.reshape(-1))


def test_reduction_kernel_expressions_see_cupys_index_sizes(connected: Daemon) -> None:
    mean = cp.ReductionKernel(
        "T x",
        "float64 y",
        "x",
        "a + b",
        "y = a / (_in_ind.size() / _out_ind.size())",  # how CuPy's own mean is written
        "0",
        "review_mean",
        reduce_type="double",
    )
    values = np.arange(24, dtype=np.int32).reshape(2, 3, 4)
    got = mean(cp.asarray(values), axis=(0, 2))
    np.testing.assert_allclose(got.get(), values.mean(axis=(0, 2)))


def test_get_copies_in_the_order_of_the_current_stream(
    connected: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a GPU, the null stream's copy is not ordered after a non-blocking stream's work."""
    copies: list[int] = []
    real_copy = cp.cuda.runtime.memcpyAsync

    def recording_copy(dst: int, src: int, size: int, kind: int, stream: int = 0) -> None:
        copies.append(stream)
        real_copy(dst, src, size, kind, stream)

    monkeypatch.setattr(cp.cuda.runtime, "memcpyAsync", recording_copy)
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        result = cp.arange(6.0)[::2] * 2
        np.testing.assert_array_equal(result.get(), [0.0, 4.0, 8.0])
    other = cp.cuda.Stream()
    np.testing.assert_array_equal(result.get(stream=other), [0.0, 4.0, 8.0])
    assert copies[-2:] == [stream.ptr, other.ptr]


def test_memory_pointer_host_copies_follow_the_current_stream(
    connected: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    copies: list[int] = []
    real_copy = cp.cuda.runtime.memcpyAsync

    def recording_copy(dst: int, src: int, size: int, kind: int, stream: int = 0) -> None:
        copies.append(stream)
        real_copy(dst, src, size, kind, stream)

    monkeypatch.setattr(cp.cuda.runtime, "memcpyAsync", recording_copy)
    pointer = cp.cuda.alloc(32)
    values, back = np.arange(4.0), np.empty(4)
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        pointer.copy_from_host(values.ctypes.data, 32)
        pointer.copy_to_host(back.ctypes.data, 32)
    np.testing.assert_array_equal(back, values)
    assert copies == [stream.ptr, stream.ptr]
