"""Hostile ATen operations straight at a session's executor (no sockets): any operator name,
tensor layout, address and argument a client could send.

Each waiting operation gets exactly one reply, an error it gets is typed (a CUDA error name
or the Python type of the operator's own refusal), nothing poisons the session, and an honest
operation works afterwards. CI runs a bounded number of examples; ``--run-slow`` many more.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpupool.errors import ARRAY_ERRORS
from gpupool.proto import gpupool_pb2 as pb
from gpupool.proto.torch_ops import ATEN
from gpupool.server.backends.emu import EmuBackend, MemoryLedger
from gpupool.server.executor import SessionExecutor
from tests.conftest import run_request

ARENA = 1 << 16
TYPED = {"cudaErrorNotSupported", "cudaErrorInvalidValue", "cudaErrorMemoryAllocation"}
TYPED |= set(ARRAY_ERRORS)

names = st.one_of(
    st.sampled_from(sorted(ATEN)).flatmap(
        lambda packet: st.sampled_from(
            [
                packet,
                f"{packet}.default",
                f"{packet}.Tensor",
                f"{packet}.Scalar",
                f"{packet}.out",
                f"{packet}.x",
            ]
        )
    ),
    st.sampled_from(
        [
            "from_file.default",
            "set_.source_Storage",
            "as_strided.default",
            "_copy_from.default",
            "manual_seed",
            "manual_seed.x",
            "",
        ]
    ),
    st.text(max_size=20),
)
dtypes = st.sampled_from(["float32", "float64", "int64", "bool", "bfloat16", "object", ""])
tensors = st.builds(
    lambda shape, strides, dtype: pb.TorchTensor(shape=shape, strides=strides, dtype=dtype),
    st.lists(st.integers(0, 9), max_size=4),
    st.lists(st.sampled_from([0, 1, 2, 5, 1 << 40]), max_size=4),
    dtypes,
)
leaves = st.one_of(
    st.builds(lambda t: pb.TorchValue(tensor=t), tensors),
    st.builds(lambda i: pb.TorchValue(integer=i), st.integers(-(2**63), 2**63 - 1)),
    st.builds(lambda x: pb.TorchValue(real=x), st.floats(allow_nan=True)),
    st.builds(lambda b: pb.TorchValue(boolean=b), st.booleans()),
    st.just(pb.TorchValue(none=True)),
    st.builds(lambda d: pb.TorchValue(dtype=d), dtypes),
    st.builds(lambda m: pb.TorchValue(memory_format=m), st.sampled_from(["channels_last", "x"])),
    st.builds(lambda t: pb.TorchValue(text=t), st.text(max_size=8)),
)
values = st.recursive(
    leaves,
    lambda inner: st.builds(
        lambda items: pb.TorchValue(list=pb.TorchValueList(items=items)),
        st.lists(inner, max_size=3),
    ),
    max_leaves=6,
)


@pytest.fixture(scope="module")
def session() -> Iterator[tuple[SessionExecutor, int]]:
    ledger = MemoryLedger.create(1 << 26, slots=2)
    executor = SessionExecutor(EmuBackend(0, ledger, slot=0), translate=lambda exc: exc)
    (reply,) = run_request(executor, malloc=pb.Malloc(size=ARENA))
    run_request(executor, memset=pb.Memset(ptr=reply.ptr, value=0, size=ARENA))
    yield executor, reply.ptr
    ledger.close()


def _hostile(session: tuple[SessionExecutor, int], data: st.DataObject) -> None:
    executor, base = session
    config = pb.TorchOpConfig(
        op=data.draw(names),
        args=data.draw(st.lists(values, max_size=4)),
        kwargs=[
            pb.TorchKeyword(name=n, value=v)
            for n, v in data.draw(
                st.lists(
                    st.tuples(st.sampled_from(["alpha", "dim", "device", "out", "x"]), values),
                    max_size=2,
                )
            )
        ],
        out=data.draw(st.lists(tensors, max_size=2)),
    ).SerializeToString()
    if data.draw(st.booleans()):
        config = data.draw(st.binary(max_size=64))  # bytes that may not even parse
    offsets = st.one_of(st.integers(0, ARENA), st.integers(-(1 << 20), 1 << 40))
    count = data.draw(st.integers(0, 8))
    pointers = struct.pack(
        f"<{count}Q",
        *[
            max(0, base + o) % 2**64
            for o in data.draw(st.lists(offsets, min_size=count, max_size=count))
        ],
    )
    replies = run_request(executor, torch_op=pb.TorchOp(config=config, pointers=pointers))
    assert len(replies) == 1
    if replies[0].HasField("error"):
        assert replies[0].error.name in TYPED, replies[0].error
    assert not executor.poisoned


def _honest(session: tuple[SessionExecutor, int]) -> None:
    executor, base = session
    spec = pb.TorchTensor(shape=[4], strides=[1], dtype="float32")
    config = pb.TorchOpConfig(
        op="fill.Scalar", args=[pb.TorchValue(tensor=spec), pb.TorchValue(real=2.5)], out=[spec]
    )
    pointers = struct.pack("<2Q", base, base + 64)
    (reply,) = run_request(
        executor, torch_op=pb.TorchOp(config=config.SerializeToString(), pointers=pointers)
    )
    assert not reply.HasField("error"), reply.error
    (data,) = run_request(executor, memcpy_dtoh=pb.MemcpyDtoH(src=base + 64, size=16))
    assert struct.unpack("<4f", data.data) == (2.5,) * 4


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_hostile_torch_ops_get_typed_errors(
    session: tuple[SessionExecutor, int], data: st.DataObject
) -> None:
    _hostile(session, data)
    _honest(session)


@pytest.mark.slow
@pytest.mark.timeout(1800)
@settings(max_examples=2000, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_hostile_torch_ops_get_typed_errors_full(
    session: tuple[SessionExecutor, int], data: st.DataObject
) -> None:
    _hostile(session, data)
    _honest(session)
