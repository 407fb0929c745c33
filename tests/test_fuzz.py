"""The standing hostile suite, fuzz part: every surface of a real daemon fed what hypothesis
makes of its messages.

Surfaces: the first frame and the frames after it on ``tcp://`` and ``shm://``, gRPC
``Session`` messages (any ``Request``), ``OpenSession`` fields, ``Batch`` entries,
``ArrayOp`` descriptors and operands, ``LaunchConfig`` and argument bytes, ``ModuleLoad``
sources and options. Messages are drawn from the protobuf descriptors themselves (so a new
field is fuzzed without a change here), with the values that matter most often: integer
edges, pointers at and around a real allocation of the fuzzing session, the daemon's own
function names and dtypes, CUDA C fragments. After every example the daemon must answer
``GetInfo``; at the end a canary session, open all along on the same device, must read back
exactly what it wrote. Each surface prints what it tried and what came back.

CI runs a bounded version (a few examples and seconds a surface); ``--run-slow`` runs the
full one (``GPUPOOL_FUZZ_EXAMPLES`` and ``GPUPOOL_FUZZ_SECONDS`` override both).
"""

from __future__ import annotations

import functools
import os
import queue
import socket
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import grpc
import numpy as np
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gpupool
from gpupool import runtime as rt
from gpupool.proto import gpupool_pb2 as pb
from gpupool.server.arrays import LINALG, RANDOM, RETURNING, UFUNCS
from gpupool.server.daemon import Daemon, start_daemon
from gpupool.transport.frames import HEADER

SESSION_TIMEOUT_S = 10.0
MAX_DEPTH = 2  # Request -> Batch -> Request
REL = 0xFEED_0000_0000_0000  # a drawn pointer REL + k means: the session's allocation + k - 64
ALLOCATION = 4096

_FD = FieldDescriptor
_U64_EDGES = (0, 1, 2, 255, 4095, 4096, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**63 - 1, 2**64 - 1)


def _ints(low: int, high: int) -> st.SearchStrategy[int]:
    edges = [e for e in (*_U64_EDGES, -1, -(2**31), -(2**63), low, high) if low <= e <= high]
    return st.sampled_from(sorted(set(edges))) | st.integers(low, high)


_BY_TYPE: dict[int, st.SearchStrategy[Any]] = {
    _FD.TYPE_UINT64: _ints(0, 2**64 - 1),
    _FD.TYPE_FIXED64: _ints(0, 2**64 - 1),
    _FD.TYPE_UINT32: _ints(0, 2**32 - 1),
    _FD.TYPE_FIXED32: _ints(0, 2**32 - 1),
    _FD.TYPE_INT64: _ints(-(2**63), 2**63 - 1),
    _FD.TYPE_SINT64: _ints(-(2**63), 2**63 - 1),
    _FD.TYPE_SFIXED64: _ints(-(2**63), 2**63 - 1),
    _FD.TYPE_INT32: _ints(-(2**31), 2**31 - 1),
    _FD.TYPE_SINT32: _ints(-(2**31), 2**31 - 1),
    _FD.TYPE_SFIXED32: _ints(-(2**31), 2**31 - 1),
    _FD.TYPE_BOOL: st.booleans(),
    _FD.TYPE_DOUBLE: st.floats(width=64),
    _FD.TYPE_FLOAT: st.floats(width=32),
    _FD.TYPE_STRING: st.text(max_size=40),
    _FD.TYPE_BYTES: st.binary(max_size=64),
}

DTYPES = ("<f4", "<f8", "|u1", "<i4", "<i8", "|b1", "<c8", "<c16", "<f2", "|O", "<U4", "|V8", "")
FUNCTIONS = (
    *UFUNCS,
    *RETURNING,
    *(f"linalg.{n}" for n in LINALG),
    *(f"random.{n}" for n in RANDOM),
)
KERNEL = 'extern "C" __global__ void k(int* p, int n) { int i = threadIdx.x; if (i < n) p[i] = i; }'
SOURCES = (
    KERNEL,
    '#include "/etc/passwd"\n',
    '%:include "/etc/shadow"\n',
    "#inc\\\nlude </etc/passwd>\n",
    '__global__ void k() { asm("trap;"); }\n',
    "template <int N> struct R { enum { v = R<N + 1>::v }; }; int x = R<0>::v;\n",
    "#define A(x) x x x x\n#define B(x) A(A(A(x)))\nint y = B(B(B(1)));\n",
    "__global__ void k(int* p) { p[0] = __shfl_sync(0xffffffff, 1, 0); }\n",
    "__global__ void k( {",
    "\x00\xff",
)
OPTIONS = ("-arch=sm_80", "-std=c++17", "-DX=1", "-D", "-I/etc", "--pre-include=/etc/passwd", "")
POINTERS = ("ptr", "src", "dst")

_SPECIAL: dict[tuple[str, str], st.SearchStrategy[Any]] = {
    ("ArrayOp", "function"): st.sampled_from(FUNCTIONS) | st.text(max_size=20),
    ("ArrayDesc", "dtype"): st.sampled_from(DTYPES) | st.text(max_size=8),
    ("Operand", "dtype"): st.sampled_from(DTYPES) | st.text(max_size=8),
    ("ArrayDesc", "shape"): _ints(0, 2**64 - 1) | st.integers(0, 64),
    ("ModuleLoad", "cuda_source"): st.sampled_from(SOURCES) | st.text(max_size=200),
    ("ModuleLoad", "options"): st.sampled_from(OPTIONS) | st.text(max_size=20),
    # 12 bytes are what k(int*, int) takes: a drawn pointer (a crash of the session's own
    # worker at worst) and a count.
    ("Launch", "arg_data"): st.binary(min_size=12, max_size=12) | st.binary(max_size=48),
    # The loaded kernel k(int*, int) is function 2: launches of it get past the handle checks.
    ("LaunchConfig", "function"): st.just(2) | _ints(0, 2**64 - 1),
    ("LaunchConfig", "arg_types"): st.just(bytes([pb.UINT64, pb.INT32])) | st.binary(max_size=8),
    ("Dim3", "x"): st.sampled_from((0, 1, 2, 3, 32, 1024, 65536, 2**31, 2**32 - 1)),
    ("Dim3", "y"): st.sampled_from((0, 1, 2, 65535, 65536, 2**32 - 1)),
    ("Dim3", "z"): st.sampled_from((0, 1, 2, 64, 65536)),
}


def _pointer() -> st.SearchStrategy[int]:
    return _ints(0, 2**64 - 1) | st.integers(0, ALLOCATION + 128).map(lambda k: REL + k)


@functools.cache
def messages(descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    """Any message of ``descriptor``'s type: each field set or not (one of each oneof at
    most), values as above."""
    cls = message_factory.GetMessageClass(descriptor)
    fields: dict[str, st.SearchStrategy[Any]] = {}
    choices: list[st.SearchStrategy[dict[str, Any]]] = []
    for oneof in descriptor.oneofs:
        members = [(f.name, _field(f, depth)) for f in oneof.fields]
        choice = [st.fixed_dictionaries({name: s}) for name, s in members if s is not None]
        choices.append(st.one_of(st.just({}), *choice))
    for field in descriptor.fields:
        strategy = _field(field, depth)
        if strategy is None or field.containing_oneof is not None:
            continue
        if field.is_repeated:
            strategy = st.lists(strategy, max_size=4)
        fields[field.name] = strategy
    plain = st.fixed_dictionaries({}, optional=fields)
    return st.tuples(plain, *choices).map(
        lambda parts: cls(**{k: v for part in parts for k, v in part.items()})
    )


def _field(field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any] | None:
    special = _SPECIAL.get((field.containing_type.name, field.name))
    if special is not None:
        return special
    if field.name in POINTERS and field.type == _FD.TYPE_UINT64:
        return _pointer()
    if field.type == _FD.TYPE_MESSAGE:
        return None if depth >= MAX_DEPTH else messages(field.message_type, depth + 1)
    if field.type == _FD.TYPE_ENUM:
        return st.sampled_from([v.number for v in field.enum_type.values]) | _ints(0, 2**31 - 1)
    return _BY_TYPE[field.type]


def rebase(message: Message, base: int) -> Message:
    """``message`` with every drawn pointer REL + k made the allocation's address + k - 64."""
    for field, value in message.ListFields():
        if field.type == _FD.TYPE_MESSAGE:
            for item in value if field.is_repeated else [value]:
                rebase(item, base)
        elif field.name in POINTERS and not field.is_repeated and value >= REL:
            setattr(message, field.name, max(0, base + value - REL - 64))
    return message


REQUESTS = messages(pb.Request.DESCRIPTOR)
OPEN = pb.Request(wait=True, open=pb.OpenSession(device=0))
MALLOC = pb.Request(wait=True, malloc=pb.Malloc(size=ALLOCATION))


def _wrap(field: str, inner: st.SearchStrategy[Message]) -> st.SearchStrategy[pb.Request]:
    return st.tuples(inner, st.booleans()).map(lambda m: pb.Request(wait=m[1], **{field: m[0]}))


LAUNCHES = st.tuples(
    messages(pb.LaunchConfig.DESCRIPTOR).map(lambda c: c.SerializeToString())
    | st.binary(max_size=40),
    _SPECIAL[("Launch", "arg_data")],
    st.booleans(),
).map(lambda t: pb.Request(wait=t[2], launch=pb.Launch(config=t[0], arg_data=t[1])))
# One kernel loaded as module 1, function 2, for the launches to find.
LAUNCH_SETUP = (
    pb.Request(wait=True, module_load=pb.ModuleLoad(module=1, cuda_source=KERNEL)),
    pb.Request(wait=True, get_function=pb.GetFunction(module=1, function=2, name="k")),
)

# surface -> (what opens the session, the requests after it)
SURFACES: dict[str, tuple[st.SearchStrategy[Any], st.SearchStrategy[list[Any]]]] = {
    "open": (_wrap("open", messages(pb.OpenSession.DESCRIPTOR)), st.lists(REQUESTS, max_size=3)),
    "requests": (st.just(OPEN), st.lists(REQUESTS, min_size=1, max_size=12)),
    "batch": (st.just(OPEN), st.lists(_wrap("batch", messages(pb.Batch.DESCRIPTOR)), max_size=4)),
    "array_op": (
        st.just(OPEN),
        st.lists(_wrap("array_op", messages(pb.ArrayOp.DESCRIPTOR)), min_size=1, max_size=8),
    ),
    "launch": (st.just(OPEN), st.lists(LAUNCHES, min_size=1, max_size=8)),
    "module_load": (
        st.just(OPEN),
        st.lists(_wrap("module_load", messages(pb.ModuleLoad.DESCRIPTOR)), min_size=1, max_size=2),
    ),
}
# A frame: kind, a message (a drawn request, or bytes), its declared and its real payload.
FRAMES = st.lists(
    st.tuples(
        st.sampled_from((0, 0, 0, 1, 2, 3, 4, 255)),
        REQUESTS.map(lambda r: r.SerializeToString()) | st.binary(max_size=64),
        st.sampled_from((0, 0, 1, 8, 4096, 2**32)),
        st.binary(max_size=64),
    ),
    max_size=8,
)


class Tally:
    """What one surface tried and what came back, printed at its end."""

    def __init__(self, surface: str) -> None:
        self.surface = surface
        self.counts: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()

    def reply(self, raw: bytes) -> pb.Reply:
        reply = pb.Reply.FromString(raw)
        self.counts["replies"] += 1
        if reply.HasField("error"):
            self.errors[reply.error.name] += 1
        return reply

    def report(self) -> str:
        errors = ", ".join(f"{name} x{n}" for name, n in self.errors.most_common(8)) or "none"
        tried = ", ".join(f"{what} {n}" for what, n in sorted(self.counts.items()))
        return f"fuzz {self.surface}: {tried}; errors: {errors}; daemon up, canary intact"


def grpc_session(daemon: Daemon, first: pb.Request, rest: list[pb.Request], tally: Tally) -> None:
    """One gRPC session: ``first``, an allocation, then ``rest`` rebased onto it."""
    base: queue.Queue[int | None] = queue.Queue()

    def requests() -> Iterator[bytes]:
        yield first.SerializeToString()
        yield MALLOC.SerializeToString()
        try:
            address = base.get(timeout=SESSION_TIMEOUT_S / 2)
        except queue.Empty:  # a refused open: the session has ended
            address = None
        for request in rest:
            tally.counts["messages"] += 1
            yield rebase(request, address or 0).SerializeToString()

    with grpc.insecure_channel(daemon.address) as channel:
        session = channel.stream_stream("/gpupool.v1.Daemon/Session")
        tally.counts["sessions"] += 1
        try:
            for raw in session(requests(), timeout=SESSION_TIMEOUT_S):
                reply = tally.reply(raw)
                if reply.WhichOneof("result") == "ptr" and base.empty():  # the allocation
                    base.put(reply.ptr)
        except grpc.RpcError as exc:
            tally.counts[f"ended {exc.code().name}"] += 1  # type: ignore[attr-defined]
        finally:
            base.put(None)


def frame_session(url: str, frames: list[tuple[int, bytes, int, bytes]], tally: Tally) -> None:
    """Raw frames on a ``tcp://`` or ``shm://`` connection, the first an opening one or not."""
    parts = urlsplit(url)
    if parts.scheme == "tcp":
        sock = socket.create_connection((parts.hostname, parts.port), SESSION_TIMEOUT_S)
    else:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(SESSION_TIMEOUT_S)
        sock.connect(parts.path)
    tally.counts["sessions"] += 1
    with sock:
        try:
            for kind, message, declared, payload in frames:
                tally.counts["frames"] += 1
                sock.sendall(HEADER.pack(kind, len(message), declared) + message + payload)
            sock.shutdown(socket.SHUT_WR)
            received = 0
            while received < 1 << 20 and (chunk := sock.recv(65536)):
                received += len(chunk)
            tally.counts["bytes back"] += received
        except OSError as exc:
            tally.counts[f"ended {type(exc).__name__}"] += 1


def alive(daemon: Daemon) -> None:
    with grpc.insecure_channel(daemon.address) as channel:
        info = channel.unary_unary("/gpupool.v1.Daemon/GetInfo")
        raw = info(pb.InfoRequest().SerializeToString(), timeout=30)
    assert pb.DaemonInfo.FromString(raw).devices


@pytest.fixture(scope="module")
def target() -> Iterator[tuple[Daemon, int, np.ndarray]]:
    """A daemon, and a canary session on its device 0 holding a pattern all along."""
    daemon = start_daemon(backend="emu", emu_devices=1, emu_memory=256 << 20)
    gpupool.connect(daemon.address)
    pattern = np.random.default_rng(11).integers(0, 256, 1 << 16, dtype=np.uint8)
    canary = rt.malloc(pattern.nbytes)
    rt.memcpy(canary, pattern.ctypes.data, pattern.nbytes, rt.memcpyHostToDevice)
    yield daemon, canary, pattern
    back = np.zeros_like(pattern)
    rt.memcpy(back.ctypes.data, canary, back.nbytes, rt.memcpyDeviceToHost)
    gpupool.disconnect()
    daemon.stop()
    assert (back == pattern).all(), "the canary session's memory changed"


def fuzz(
    surface: str, target: tuple[Daemon, int, np.ndarray], examples: int, seconds: float
) -> None:
    daemon, canary, pattern = target
    tally = Tally(surface)
    options = settings(
        max_examples=int(os.environ.get("GPUPOOL_FUZZ_EXAMPLES", examples)),
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    seconds = float(os.environ.get("GPUPOOL_FUZZ_SECONDS", seconds))
    stop = time.monotonic() + seconds

    if surface in ("tcp_frames", "shm_frames"):
        scheme = surface.split("_")[0]
        url = next(u for u in daemon.endpoints if u.startswith(f"{scheme}://"))
        opening = st.sampled_from([(0, OPEN.SerializeToString(), 0, b"")]) | FRAMES.map(
            lambda f: f[0] if f else (0, b"", 0, b"")
        )

        @options
        @given(first=opening, rest=FRAMES)
        def example(first: tuple[int, bytes, int, bytes], rest: list[Any]) -> None:
            if time.monotonic() > stop:
                return
            tally.counts["examples"] += 1
            frame_session(url, [first, *rest], tally)
            alive(daemon)

    else:
        opening_strategy, rest_strategy = SURFACES[surface]
        setup = list(LAUNCH_SETUP) if surface == "launch" else []

        @options
        @given(first=opening_strategy, rest=rest_strategy)
        def example(first: pb.Request, rest: list[pb.Request]) -> None:
            if time.monotonic() > stop:
                return
            tally.counts["examples"] += 1
            grpc_session(daemon, first, [*setup, *rest], tally)
            alive(daemon)

    example()
    back = np.zeros_like(pattern)
    rt.memcpy(back.ctypes.data, canary, back.nbytes, rt.memcpyDeviceToHost)
    assert (back == pattern).all(), f"fuzzing {surface} changed the canary session's memory"
    assert tally.counts["examples"] > 0
    print(tally.report())


ALL = [*SURFACES, "tcp_frames", "shm_frames"]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("surface", ALL)
def test_fuzz_bounded(surface: str, target: tuple[Daemon, int, np.ndarray]) -> None:
    fuzz(surface, target, examples=4, seconds=5)


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("surface", ALL)
def test_fuzz_full(surface: str, target: tuple[Daemon, int, np.ndarray]) -> None:
    fuzz(surface, target, examples=300, seconds=180)
