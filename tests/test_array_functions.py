"""The daemon's array functions, driven through the session executor (no sockets)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import numpy as np
import pytest

from gpupool.arrayshapes import array_extent
from gpupool.proto import gpupool_pb2 as pb
from gpupool.server.arrays import checked_dtype, indexed_shape, result_shape
from gpupool.server.backends.emu import EmuBackend, MemoryLedger
from gpupool.server.executor import SessionExecutor
from tests.conftest import run_request as call


@pytest.fixture
def executor() -> Iterator[SessionExecutor]:
    ledger = MemoryLedger.create(1 << 30, slots=2)
    yield SessionExecutor(EmuBackend(0, ledger, slot=0), translate=lambda exc: exc)
    ledger.close()


def device_array(executor: SessionExecutor, values: np.ndarray) -> pb.ArrayDesc:
    (reply,) = call(executor, malloc=pb.Malloc(size=values.nbytes))
    call(
        executor,
        memcpy_htod=pb.MemcpyHtoD(dst=reply.ptr, size=values.nbytes, data=values.tobytes()),
    )
    return pb.ArrayDesc(
        ptr=reply.ptr, shape=values.shape, strides=values.strides, dtype=values.dtype.str
    )


def read(executor: SessionExecutor, desc: pb.ArrayDesc) -> np.ndarray:
    dtype = np.dtype(desc.dtype)
    size = int(np.prod(desc.shape)) * dtype.itemsize
    replies = call(executor, memcpy_dtoh=pb.MemcpyDtoH(src=desc.ptr, size=size))
    return np.frombuffer(b"".join(r.data for r in replies), dtype).reshape(tuple(desc.shape))


def test_extents_of_strided_views() -> None:
    assert array_extent(1000, (3, 4), (32, 8), 8) == (1000, 1096)
    assert array_extent(1000, (4,), (-8,), 8) == (976, 1008)
    assert array_extent(1000, (5, 3), (0, 8), 8) == (1000, 1024)
    assert array_extent(1000, (0, 3), (24, 8), 8) == (1000, 1000)


def test_only_numeric_dtypes_are_accepted() -> None:
    assert checked_dtype("<f4") == np.float32
    for text in ("|O", "<U3", "|V8", "(2,)<i4", "i4,i4", "[('a', '<i4')]"):
        with pytest.raises(TypeError, match=r"not a numeric dtype|not understood"):
            checked_dtype(text)


def test_a_ufunc_writes_into_its_output_view(executor: SessionExecutor) -> None:
    source = device_array(executor, np.arange(6.0).reshape(2, 3))
    column = pb.ArrayDesc(ptr=source.ptr + 8, shape=[2], strides=[24], dtype="<f8")
    op = pb.ArrayOp(
        function="multiply",
        args=[pb.Operand(array=column), pb.Operand(integer=10)],
        out=[column],
    )
    assert call(executor, wait=False, array_op=op) == []
    np.testing.assert_array_equal(read(executor, source), [[0, 10, 2], [3, 40, 5]])


def test_an_array_error_is_held_and_the_next_waiting_call_reports_it(
    executor: SessionExecutor,
) -> None:
    values = device_array(executor, np.arange(4.0))
    index = device_array(executor, np.array([7], np.int64))
    out = device_array(executor, np.zeros(1))
    key = pb.Operand(sequence=pb.OperandList(items=[pb.Operand(array=index)]))
    op = pb.ArrayOp(function="getitem", args=[pb.Operand(array=values), key], out=[out])
    assert call(executor, wait=False, array_op=op) == []
    (reply,) = call(executor, device_synchronize=pb.DeviceSynchronize())
    assert reply.error.name == "IndexError"
    assert "out of bounds" in reply.error.message
    (ok,) = call(executor, device_synchronize=pb.DeviceSynchronize())
    assert not ok.HasField("error")


def test_views_that_are_misaligned_or_cross_an_allocation_are_refused(
    executor: SessionExecutor,
) -> None:
    first = device_array(executor, np.zeros(4))
    device_array(executor, np.zeros(4))  # a neighbour it must not reach into
    crossing = pb.ArrayDesc(ptr=first.ptr, shape=[64], strides=[8], dtype="<f8")
    misaligned = pb.ArrayDesc(ptr=first.ptr + 4, shape=[2], strides=[8], dtype="<f8")
    for desc, name in ((crossing, "cudaErrorInvalidValue"), (misaligned, "ValueError")):
        op = pb.ArrayOp(function="negative", args=[pb.Operand(array=first)], out=[desc])
        (reply,) = call(executor, array_op=op)
        assert reply.error.name == name
    assert not executor.poisoned


def test_random_states_are_made_seeded_and_released(executor: SessionExecutor) -> None:
    out = device_array(executor, np.zeros(3))
    seed = pb.ArrayOp(function="random.seed", args=[pb.Operand(integer=2**40)], generator=5)
    sample = pb.ArrayOp(function="random.random_sample", out=[out], generator=5)
    release = pb.ArrayOp(function="random.release", generator=5)
    draws = []
    for _ in range(2):
        assert call(executor, wait=False, array_op=seed) == []
        assert call(executor, wait=False, array_op=sample) == []
        draws.append(read(executor, out))
    np.testing.assert_array_equal(draws[0], draws[1])  # the same seed, the same numbers
    assert ((0 <= draws[0]) & (draws[0] < 1)).all()
    assert call(executor, wait=False, array_op=release) == []
    (reply,) = call(executor, array_op=sample)
    assert reply.error.name == "cudaErrorInvalidResourceHandle"


def test_numpy_warnings_stay_out_of_the_daemon_log(executor: SessionExecutor) -> None:
    values = device_array(executor, np.array([1.0, 0.0, -1.0]))
    out = device_array(executor, np.zeros(3))
    empty = pb.ArrayDesc(ptr=values.ptr, shape=[0], strides=[8], dtype="<f8")
    scalar = pb.ArrayDesc(ptr=out.ptr, shape=[], strides=[], dtype="<f8")
    divide = pb.ArrayOp(
        function="true_divide",
        args=[pb.Operand(array=values), pb.Operand(real=0.0)],
        out=[out],
    )
    mean = pb.ArrayOp(function="mean", args=[pb.Operand(array=empty)], out=[scalar])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning would fail the call
        call(executor, wait=False, array_op=divide)
        (reply,) = call(executor, device_synchronize=pb.DeviceSynchronize())
        assert not reply.HasField("error"), reply.error
        np.testing.assert_array_equal(read(executor, out), [np.inf, np.nan, -np.inf])
        call(executor, wait=False, array_op=mean)
        (reply,) = call(executor, device_synchronize=pb.DeviceSynchronize())
        assert not reply.HasField("error"), reply.error
        assert np.isnan(read(executor, scalar))


def test_a_broadcast_view_bigger_than_the_device_is_refused(executor: SessionExecutor) -> None:
    """Zero strides make any shape fit one element; the function's temporaries and loops
    would not (a fancy index of it, a sort, a variance)."""
    values = device_array(executor, np.arange(4.0))
    out = device_array(executor, np.zeros(4))
    huge = pb.ArrayDesc(ptr=values.ptr, shape=[1 << 20, 1 << 20], strides=[0, 0], dtype="<f8")
    rows = device_array(executor, np.arange(4))
    index = pb.Operand(sequence=pb.OperandList(items=[pb.Operand(array=rows)]))
    op = pb.ArrayOp(function="getitem", args=[pb.Operand(array=huge), index], out=[out])
    call(executor, wait=False, array_op=op)
    (reply,) = call(executor, device_synchronize=pb.DeviceSynchronize())
    assert reply.error.name == "ValueError"
    assert "spans more than the device's" in reply.error.message
    broadcast = pb.ArrayDesc(ptr=values.ptr, shape=[1024, 4], strides=[0, 8], dtype="<f8")
    column = pb.ArrayDesc(ptr=out.ptr, shape=[4], strides=[8], dtype="<f8")
    op = pb.ArrayOp(
        function="sum",
        args=[pb.Operand(array=broadcast)],
        kwargs=[pb.Keyword(name="axis", value=pb.Operand(integer=0))],
        out=[column],
    )
    call(executor, wait=False, array_op=op)  # a broadcast view within the device still works
    np.testing.assert_array_equal(read(executor, out), np.arange(4.0) * 1024)


@pytest.mark.parametrize("name", ["dot", "inner", "matmul", "outer"])
def test_product_shapes_are_numpys(name: str) -> None:
    shapes = [(), (3,), (2, 3), (3, 3), (4, 2, 3), (1, 3, 3), (5, 1, 3, 3)]
    for a in shapes:
        for b in shapes:
            try:
                expected = getattr(np, name)(np.ones(a), np.ones(b)).shape
            except ValueError:
                continue
            assert result_shape(name, [np.ones(a), np.ones(b)]) == expected, (a, b)
    assert result_shape("where", [np.ones((3, 1)), 0.5, np.ones(4)]) == (3, 4)
    assert result_shape("sum", [np.ones(3)]) is None


def test_indexed_shapes_are_numpys() -> None:
    values = np.ones((4, 5, 6))
    rows, grid = np.array([0, 3, 1]), np.zeros((2, 1), np.int64)
    keys: list[object] = [
        rows,
        (rows, slice(1, 4)),
        (Ellipsis, rows),
        (slice(None), grid, rows),
        (grid, slice(None), rows),
        (None, rows, Ellipsis, None),
        (1, rows),
    ]
    for key in keys:
        assert indexed_shape(values, key) == values[key].shape, key  # type: ignore[index]
    assert indexed_shape(values, np.ones(4, bool)) is None  # a mask's count needs the data
    assert indexed_shape(values, np.array([9])) == (1, 5, 6)  # the values are checked later
    assert indexed_shape(np.ones((0, 3)), np.array([0])) is None  # an empty dimension


def test_a_result_bigger_than_its_output_is_refused_before_it_is_computed(
    executor: SessionExecutor,
) -> None:
    vector = device_array(executor, np.arange(4.0))
    out = device_array(executor, np.zeros(16))
    row = pb.ArrayDesc(ptr=vector.ptr, shape=[1, 1 << 24], strides=[0, 0], dtype="<f8")
    column = pb.ArrayDesc(ptr=vector.ptr, shape=[1 << 24, 1], strides=[0, 0], dtype="<f8")
    grid = pb.ArrayDesc(ptr=out.ptr, shape=[4, 4], strides=[32, 8], dtype="<f8")
    condition = pb.ArrayDesc(ptr=vector.ptr, shape=[], strides=[], dtype="<f8")
    for function in ("matmul", "where"):  # (2**24)**2 elements: never allocated
        operands = [column, row] if function == "matmul" else [condition, column, row]
        op = pb.ArrayOp(function=function, args=[pb.Operand(array=a) for a in operands], out=[grid])
        call(executor, wait=False, array_op=op)
        (reply,) = call(executor, device_synchronize=pb.DeviceSynchronize())
        assert reply.error.name == "ValueError"
        assert "does not fit the output" in reply.error.message
    op = pb.ArrayOp(
        function="outer", args=[pb.Operand(array=vector), pb.Operand(array=vector)], out=[grid]
    )
    call(executor, wait=False, array_op=op)  # a result that fits is computed as before
    np.testing.assert_array_equal(
        read(executor, out), np.outer(np.arange(4.0), np.arange(4.0)).ravel()
    )


def test_sampling_without_replacement_from_a_huge_population_is_refused(
    executor: SessionExecutor,
) -> None:
    """NumPy and CuPy permute the whole population: 2**40 int64s would be 8 TiB."""
    out = device_array(executor, np.zeros(4, np.int64))
    seed = pb.ArrayOp(function="random.seed", args=[pb.Operand(integer=1)], generator=3)
    call(executor, wait=False, array_op=seed)
    replace = pb.Keyword(name="replace", value=pb.Operand(boolean=False))
    for population in (1 << 40, 10):
        op = pb.ArrayOp(
            function="random.choice",
            args=[pb.Operand(integer=population)],
            kwargs=[replace],
            generator=3,
            out=[out],
        )
        call(executor, wait=False, array_op=op)
        (reply,) = call(executor, device_synchronize=pb.DeviceSynchronize())
        if population > 10:
            assert reply.error.name == "ValueError"
            assert "spans more than the device" in reply.error.message
        else:
            assert not reply.HasField("error"), reply.error
    samples = read(executor, out)
    assert len(set(samples.tolist())) == 4 and samples.max() < 10


def test_every_ufunc_of_the_shim_is_in_the_daemons_table() -> None:
    """The shim's ufuncs (its public names) and the daemon's whitelist are two lists: the
    client's decides what a program can call, the daemon's what it will run. They must agree."""
    from gpupool.cupy import _ufuncs
    from gpupool.server.arrays import UFUNCS

    assert sorted(_ufuncs.BY_NAME) == sorted(UFUNCS)
