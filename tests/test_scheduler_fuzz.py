"""The standing hostile suite, scheduler part: hypothesis drives every call of the
scheduler's gRPC surface with hostile values (NaN, infinities, 1e308, shares of nothing,
counts past 2**31, long and unprintable strings, forged proofs, bytes that are no message)
against a real scheduler on loopback with one registered node.

Every call must end in a typed answer (a refusal naming its field, a capacity or permission
refusal, or a grant within the limits), never UNKNOWN or INTERNAL (bytes that do not parse
get INVALID_ARGUMENT too); after each example the pool must still answer, and every
allocation it holds must be within the limits. The bounded run is part of CI; the full one
is ``--run-slow``. Each prints what it tried and what survived.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.message import DecodeError, Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpupool import grants
from gpupool.proto import scheduler_pb2 as spb
from gpupool.proto import scheduler_pb2_grpc as spb_grpc
from gpupool.proto.limits import GRPC_OPTIONS
from gpupool.scheduler import limits
from gpupool.scheduler.service import Scheduler, start_scheduler

SECRET = b"fuzz-test-secret-0123456789"
GiB = 1 << 30
TYPED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.UNAUTHENTICATED,
}
CALL_S = 0.5  # a request that may wait is given this long, then gives up (and is withdrawn)
ANSWER_S = 10.0  # any other call must be answered within this (a shared, busy machine)
METHODS: dict[str, type[Message]] = {
    "Register": spb.NodeRegistration,
    "Heartbeat": spb.NodeHeartbeat,
    "Allocate": spb.AllocationRequest,
    "Renew": spb.LeaseRef,
    "Release": spb.LeaseRef,
    "Pool": spb.PoolRequest,
    "CheckAllocation": spb.AllocationCheck,
}

hostile_floats = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1e-10, 0.0099, 0.01, 0.5, 1.0, 1.0000001, 1e308, -1e308]),
)
hostile_text = st.one_of(
    st.text(max_size=40),
    st.text(alphabet="\x00\n\r\x1b\u202e", max_size=8),
    st.integers(250, 5000).map(lambda n: "x" * n),
)
uint32 = st.integers(0, (1 << 32) - 1)
uint64 = st.one_of(st.integers(0, (1 << 64) - 1), st.sampled_from([0, 1, 1 << 20, 4 * GiB]))


@st.composite
def allocation_requests(draw: st.DrawFn) -> spb.AllocationRequest:
    """Requests with every field sane but a few drawn hostile (each check is reached, and
    some requests are granted: their grants are checked against the limits)."""
    hostile = draw(st.sets(st.sampled_from(["count", "share", "policy", "ttl", "wait", "owner"])))

    def field(name: str, sane: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> Any:
        return draw(bad if name in hostile else sane)

    request = spb.AllocationRequest(
        count=field("count", st.integers(1, 3), st.one_of(uint32, st.just(0))),
        policy=field("policy", st.sampled_from([0, 1]), st.integers(0, (1 << 31) - 1)),
        same_node=draw(st.booleans()),
        ttl_s=field("ttl", st.floats(1, 3600), hostile_floats),
        wait_s=field("wait", st.just(0.0), hostile_floats),
        owner=field("owner", st.text(max_size=20).filter(str.isprintable), hostile_text),
    )
    if draw(st.booleans()):
        request.fraction = field("share", st.floats(0.01, 1), hostile_floats)
    elif "share" not in hostile or draw(st.booleans()):
        request.memory = field("share", st.integers(1 << 20, 8 * GiB), uint64)
    return request


def proven(call: str, message: Any, node: str) -> Any:
    grants.prove(call, message, node, SECRET, time.time())
    return message


@st.composite
def node_calls(draw: st.DrawFn) -> tuple[str, Message]:
    """Register, Heartbeat and CheckAllocation, some with genuine proofs (so their bodies
    are checked), some forged or empty."""
    name = draw(st.one_of(st.just("fz"), hostile_text))
    kind = draw(st.sampled_from(["Register", "Heartbeat", "CheckAllocation"]))
    message: Message
    if kind == "Register":
        message = spb.NodeRegistration(
            name=name,
            address=draw(st.one_of(st.just("127.0.0.1:1"), hostile_text)),
            oversubscription=draw(hostile_floats),
            backend=draw(st.sampled_from(["emu", "cupy", "", "evil"])),
            gpus=[
                spb.GpuInfo(index=draw(uint32), uuid=draw(hostile_text), memory=draw(uint64))
                for _ in range(draw(st.integers(0, 3)))
            ],
        )
    elif kind == "Heartbeat":
        message = spb.NodeHeartbeat(
            name=name,
            wait_s=draw(hostile_floats),
            gpus=[
                spb.GpuFigures(
                    index=draw(uint32),
                    memory_used=draw(uint64),
                    utilization=draw(uint32),
                    sessions=draw(st.lists(hostile_text, max_size=3)),
                )
                for _ in range(draw(st.integers(0, 3)))
            ],
        )
    else:
        message = spb.AllocationCheck(node=name, allocation=draw(hostile_text))
    proof = draw(st.sampled_from(["genuine", "forged", "none"]))
    if proof == "genuine":
        proven(kind.lower().removeprefix("allocation") or "check", message, name)
    elif proof == "forged":
        grants.prove(kind.lower(), message, name, b"not-the-secret-at-all", time.time())
    if kind == "CheckAllocation" and proof == "genuine":
        grants.prove("check", message, name, SECRET, time.time())
    return kind, message


allocations = allocation_requests().map(lambda request: ("Allocate", request))
calls = st.one_of(
    allocations,
    allocations,
    allocations,
    hostile_text.map(lambda text: ("Renew", spb.LeaseRef(id=text))),
    hostile_text.map(lambda text: ("Release", spb.LeaseRef(id=text))),
    st.just(("Pool", spb.PoolRequest())),
    node_calls(),
    st.tuples(st.sampled_from(sorted(METHODS)), st.binary(max_size=200)),
)


def may_wait(method: str, payload: bytes) -> bool:
    """Whether the call may rightly wait: a request for capacity, a held heartbeat."""
    try:
        if method == "Allocate":
            return spb.AllocationRequest.FromString(payload).wait_s > 0
        if method == "Heartbeat":
            return spb.NodeHeartbeat.FromString(payload).wait_s > 0
    except DecodeError:
        pass
    return False


class Fuzzer:
    """The scheduler under test, a raw channel to it, and the tally of what happened."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self.channel = grpc.insecure_channel(scheduler.address, GRPC_OPTIONS)
        self.stub = spb_grpc.SchedulerStub(self.channel)
        self.tally: Counter[str] = Counter()
        self.granted = 0
        self.node = spb.NodeRegistration()

    def raw(self, method: str) -> Callable[..., bytes]:
        return self.channel.unary_unary(f"/gpupool.v1.Scheduler/{method}")

    def send(self, method: str, message: Message | bytes) -> None:
        payload = message if isinstance(message, bytes) else message.SerializeToString()
        try:
            reply = self.raw(method)(
                payload, timeout=CALL_S if may_wait(method, payload) else ANSWER_S
            )
            code = grpc.StatusCode.OK
        except grpc.RpcError as exc:
            code, reply = exc.code(), b""
        self.tally[f"{method} {code.name}"] += 1
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            # only a request that may wait (for capacity; a heartbeat held until an allocation
            # ends) is allowed to run out of time
            if method == "Heartbeat":  # held for at most the heartbeat interval, whatever asked
                assert spb.NodeHeartbeat.FromString(payload).wait_s > 0, message
            else:
                assert method == "Allocate", (method, message)
                wait = spb.AllocationRequest.FromString(payload).wait_s
                assert 0 < wait <= limits.MAX_WAIT_S, (method, message)
            return
        try:
            METHODS[method].FromString(payload)
        except DecodeError:  # bytes that are no message: refused as such, no traceback
            assert code == grpc.StatusCode.INVALID_ARGUMENT, (method, code)
            return
        assert code in TYPED, (method, code, message)
        if method == "Allocate" and code == grpc.StatusCode.OK:
            allocation = spb.Allocation.FromString(reply)
            self.granted += 1
            self.check(allocation)
            self.stub.Release(spb.LeaseRef(id=allocation.id), timeout=5)

    def check(self, allocation: spb.Allocation) -> None:
        """A grant within the limits: a real share, a real quota, a lease that ends."""
        assert math.isfinite(allocation.expires_at)
        assert allocation.expires_at <= time.time() + limits.MAX_TTL_S + 1
        assert limits.MIN_TTL_S <= allocation.ttl_s <= limits.MAX_TTL_S
        for gpu in allocation.gpus:
            assert gpu.fraction >= limits.MIN_FRACTION and gpu.memory >= limits.MIN_MEMORY
            assert grants.read(gpu.grant).memory == gpu.memory > 0

    def survived(self) -> spb.PoolState:
        state = self.stub.Pool(spb.PoolRequest(), timeout=5)
        for allocation in state.allocations:
            self.check(allocation)
        assert all(0 <= gpu.fraction_free <= 1 for gpu in state.gpus)
        return state

    def register(self) -> None:
        node = spb.NodeRegistration()
        node.CopyFrom(self.node)
        self.stub.Register(proven("register", node, "fz"), timeout=5)

    def summary(self) -> str:
        return ", ".join(f"{key}: {count}" for key, count in sorted(self.tally.items()))


@pytest.fixture(scope="module")
def fuzzer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzer]:
    db = tmp_path_factory.mktemp("fuzz") / "scheduler.db"
    scheduler = start_scheduler("127.0.0.1:0", str(db), SECRET, node_timeout=3600, tick_s=0.05)
    fuzz = Fuzzer(scheduler)
    node = spb.NodeRegistration(
        name="fz",
        address="127.0.0.1:1",
        backend="emu",
        gpus=[spb.GpuInfo(index=i, uuid=f"u{i}", name="emu", memory=8 * GiB) for i in range(4)],
    )
    fuzz.node = node
    yield fuzz
    fuzz.channel.close()
    scheduler.stop()


def run(fuzz: Fuzzer, examples: int) -> None:
    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=examples < 1000,  # CI: the same inputs every run
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(st.lists(calls, min_size=1, max_size=4))
    def one(batch: list[tuple[str, Message | bytes]]) -> None:
        fuzz.register()  # a genuine proof may have changed the node: each example starts anew
        for method, message in batch:
            fuzz.send(method, message)
        fuzz.survived()

    one()
    state = fuzz.survived()
    fuzz.register()
    genuine = spb.AllocationRequest(count=1, fraction=0.5, ttl_s=30)
    allocation = fuzz.stub.Allocate(genuine, timeout=5)  # a genuine caller is still served
    fuzz.stub.Release(spb.LeaseRef(id=allocation.id), timeout=5)
    print(f"tried {sum(fuzz.tally.values())} calls: {fuzz.summary()}")
    print(
        f"survived: the scheduler answers, {len(state.gpus)} GPUs listed, {fuzz.granted}"
        " hostile grants all within the limits, a genuine request granted afterwards"
    )


def test_the_scheduler_survives_hostile_calls_bounded(fuzzer: Fuzzer) -> None:
    run(fuzzer, examples=150)


@pytest.mark.slow
def test_the_scheduler_survives_hostile_calls_full(fuzzer: Fuzzer) -> None:
    run(fuzzer, examples=5000)


def test_the_fuzzer_has_the_whole_surface(tmp_path: Path) -> None:
    """A call added to the service is added here too."""
    service = spb.DESCRIPTOR.services_by_name["Scheduler"]
    assert set(METHODS) == {method.name for method in service.methods}
