"""The session executor's protocol, driven directly on the emulator backend (no sockets)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from gpupool.proto import gpupool_pb2 as pb
from gpupool.proto.limits import CHUNK_SIZE
from gpupool.server.backends.emu import EmuBackend, MemoryLedger
from gpupool.server.executor import SessionExecutor
from tests.conftest import run_request as run


@pytest.fixture
def executor() -> Iterator[SessionExecutor]:
    ledger = MemoryLedger.create(1 << 30, slots=2)
    yield SessionExecutor(EmuBackend(0, ledger, slot=0), translate=lambda exc: exc)
    ledger.close()


def malloc(executor: SessionExecutor, size: int) -> int:
    (reply,) = run(executor, malloc=pb.Malloc(size=size))
    return reply.ptr


def test_a_chunked_copy_replies_once_after_its_last_chunk(executor: SessionExecutor) -> None:
    size = 2 * CHUNK_SIZE + 10
    ptr = malloc(executor, size)
    payload = np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes()
    assert run(executor, memcpy_htod=pb.MemcpyHtoD(dst=ptr, size=size)) == []
    replies = [
        run(executor, wait=False, chunk=pb.Chunk(data=payload[i : i + CHUNK_SIZE]))
        for i in range(0, size, CHUNK_SIZE)
    ]
    assert replies[:-1] == [[], []] and len(replies[-1]) == 1
    assert not replies[-1][0].HasField("error")
    back = run(executor, memcpy_dtoh=pb.MemcpyDtoH(src=ptr, size=size))
    assert [reply.more for reply in back] == [True, True, False]
    assert b"".join(reply.data for reply in back) == payload


def test_a_refused_chunked_copy_swallows_its_chunks(executor: SessionExecutor) -> None:
    ptr = malloc(executor, 16)
    size = CHUNK_SIZE + 1
    assert run(executor, memcpy_htod=pb.MemcpyHtoD(dst=ptr, size=size)) == []
    assert run(executor, wait=False, chunk=pb.Chunk(data=bytes(CHUNK_SIZE))) == []
    (reply,) = run(executor, wait=False, chunk=pb.Chunk(data=b"x"))
    assert reply.error.name == "cudaErrorInvalidValue"
    assert "past the end" in reply.error.message
    (ok,) = run(executor, device_synchronize=pb.DeviceSynchronize())
    assert not ok.HasField("error")


def test_a_copy_interrupted_by_another_call_is_an_error(executor: SessionExecutor) -> None:
    ptr = malloc(executor, 4 * CHUNK_SIZE)
    assert run(executor, memcpy_htod=pb.MemcpyHtoD(dst=ptr, size=4 * CHUNK_SIZE)) == []
    (reply,) = run(executor, mem_get_info=pb.MemGetInfo())
    assert "expected the rest of a host-to-device copy" in reply.error.message


def test_an_asynchronous_error_is_held_and_reported_once(executor: SessionExecutor) -> None:
    assert run(executor, wait=False, free=pb.Free(ptr=1234)) == []
    assert run(executor, wait=False, memset=pb.Memset(ptr=1, value=300, size=1)) == []
    (first,) = run(executor, device_synchronize=pb.DeviceSynchronize())
    assert first.error.name == "cudaErrorInvalidValue" and "free" in first.error.message
    (second,) = run(executor, device_synchronize=pb.DeviceSynchronize())
    assert not second.HasField("error")


def test_batches_run_in_order_and_refuse_nesting(executor: SessionExecutor) -> None:
    ptr = malloc(executor, 4)
    batch = pb.Batch(
        requests=[
            pb.Request(memset=pb.Memset(ptr=ptr, value=1, size=4)),
            pb.Request(memset=pb.Memset(ptr=ptr, value=2, size=2)),
            pb.Request(wait=True, memcpy_dtoh=pb.MemcpyDtoH(src=ptr, size=4)),
        ]
    )
    (reply,) = run(executor, wait=False, batch=batch)
    assert reply.data == b"\x02\x02\x01\x01"
    nested = pb.Batch(requests=[pb.Request(batch=pb.Batch())])
    (refused,) = run(executor, batch=nested)
    assert "cannot hold" in refused.error.message


def test_handles_are_checked(executor: SessionExecutor) -> None:
    assert run(executor, wait=False, stream_create=pb.StreamCreate(stream=5)) == []
    (reused,) = run(executor, stream_create=pb.StreamCreate(stream=5))
    assert reused.error.name == "cudaErrorInvalidResourceHandle"
    (unknown,) = run(executor, event_query=pb.EventQuery(event=77))
    assert unknown.error.name == "cudaErrorInvalidResourceHandle"
    (empty,) = run(executor)
    assert empty.error.message == "request names no call"


def test_memory_is_accounted_across_the_device(executor: SessionExecutor) -> None:
    (before,) = run(executor, mem_get_info=pb.MemGetInfo())
    malloc(executor, 100 << 20)
    (after,) = run(executor, mem_get_info=pb.MemGetInfo())
    assert before.mem_info.free - after.mem_info.free == 100 << 20
    (refused,) = run(executor, malloc=pb.Malloc(size=1 << 30))
    assert refused.error.name == "cudaErrorMemoryAllocation"


def test_malformed_batches_get_exactly_one_reply(executor: SessionExecutor) -> None:
    waiting_malloc = pb.Request(wait=True, malloc=pb.Malloc(size=16))
    with_chunk = pb.Batch(requests=[pb.Request(chunk=pb.Chunk(data=b"x")), waiting_malloc])
    (refused,) = run(executor, wait=False, batch=with_chunk)
    assert "cannot hold" in refused.error.message
    (twice,) = run(executor, wait=True, batch=pb.Batch(requests=[waiting_malloc]))
    assert "only the last call of a batch may wait" in twice.error.message
    early = pb.Batch(requests=[waiting_malloc, pb.Request(free=pb.Free(ptr=0))])
    (refused_early,) = run(executor, wait=False, batch=early)
    assert refused_early.HasField("error")


def test_a_waiting_call_with_a_held_error_does_not_run(executor: SessionExecutor) -> None:
    (before,) = run(executor, mem_get_info=pb.MemGetInfo())
    assert run(executor, wait=False, memset=pb.Memset(ptr=99, value=0, size=1)) == []
    (refused,) = run(executor, malloc=pb.Malloc(size=1 << 20))
    assert refused.error.name == "cudaErrorInvalidValue" and refused.ptr == 0
    (after,) = run(executor, mem_get_info=pb.MemGetInfo())
    assert after.mem_info.free == before.mem_info.free  # nothing was allocated
    ptr = malloc(executor, 4 * CHUNK_SIZE)
    assert run(executor, wait=False, free=pb.Free(ptr=7)) == []
    assert run(executor, memcpy_htod=pb.MemcpyHtoD(dst=ptr, size=4 * CHUNK_SIZE)) == []
    chunk = pb.Chunk(data=bytes(2 * CHUNK_SIZE))
    assert run(executor, wait=False, chunk=chunk) == []  # a refused copy's chunks are dropped
    (held,) = run(executor, wait=False, chunk=chunk)
    assert "free" in held.error.message


def test_the_null_stream_cannot_be_destroyed(executor: SessionExecutor) -> None:
    (reply,) = run(executor, stream_destroy=pb.StreamDestroy(stream=0))
    assert reply.error.name == "cudaErrorInvalidResourceHandle"
    assert "null stream" in reply.error.message


@pytest.mark.parametrize(
    "grid, block, shared, problem",
    [
        ((0, 1, 1), (32, 1, 1), 0, "grid.x"),
        ((1, 65536, 1), (32, 1, 1), 0, "grid.y"),
        ((1, 1, 1), (1025, 1, 1), 0, "block.x"),
        ((1, 1, 1), (1, 1, 65), 0, "block.z"),
        ((1, 1, 1), (32, 32, 2), 0, "2048 threads"),
        ((1, 1, 1), (32, 1, 1), 48 * 1024 + 1, "shared memory"),
    ],
)
def test_launch_configurations_are_checked_before_the_backend(
    executor: SessionExecutor,
    grid: tuple[int, int, int],
    block: tuple[int, int, int],
    shared: int,
    problem: str,
) -> None:
    config = pb.LaunchConfig(
        function=12345,  # not even a function: the configuration is checked first
        grid=pb.Dim3(x=grid[0], y=grid[1], z=grid[2]),
        block=pb.Dim3(x=block[0], y=block[1], z=block[2]),
        shared_mem=shared,
    )
    launch = pb.Launch(config=config.SerializeToString())
    (reply,) = run(executor, launch=launch)
    assert reply.error.name == "cudaErrorInvalidConfiguration"
    assert problem in reply.error.message


@pytest.mark.parametrize(
    "source, options",
    [
        ('#include "/etc/passwd"\n', []),
        ("#include <../../etc/passwd>\n", []),
        ('#define P "/etc/passwd"\n#include P\n', []),
        ('#include_next "/etc/hosts"\n', []),
        ("__global__ void k() {}\n", ["-I/etc"]),
        # The bypasses of issue 11: a digraph, a comment, a backslash-newline in the directive.
        ('%:include "/etc/passwd"\n', []),
        ('#/**/include "/etc/passwd"\n', []),
        ('#inc\\\nlude "/etc/passwd"\n', []),
        ("# \\\n include </etc/passwd>\n", []),
        ('#include "/etc/\\\npasswd"\n', []),
        ('/* a */ # /* b\n c */ include "/etc/passwd"\n', []),
        ('??=include "/etc/passwd"\n', []),
        ('#import "/etc/passwd"\n', []),
        ('#embed "/etc/passwd"\n', []),
        ("#if __has_embed(<x>)\n#endif\n", []),
        # Options that read or write the daemon's files.
        ("__global__ void k() {}\n", ["--pre-include=/etc/passwd"]),
        ("__global__ void k() {}\n", ["-include", "/etc/passwd"]),
        ("__global__ void k() {}\n", ["--time=/tmp/gpupool-times"]),
        ("__global__ void k() {}\n", ["--fdevice-time-trace=/tmp/gpupool-trace"]),
        ("__global__ void k() {}\n", ["--use-pch=/etc/passwd"]),
    ],
)
def test_includes_that_reach_the_daemons_files_are_refused(
    executor: SessionExecutor, source: str, options: list[str]
) -> None:
    load = pb.ModuleLoad(module=1, cuda_source=source, options=options)
    (reply,) = run(executor, module_load=load)
    assert reply.error.name == "CompileError" and "refused" in reply.error.message
    assert "root:" not in reply.error.log


def test_a_session_opens_once(executor: SessionExecutor) -> None:
    (first,) = run(executor, open=pb.OpenSession(device=0))
    assert first.HasField("opened")
    (again,) = run(executor, open=pb.OpenSession(device=1))
    assert again.error.message == "the session is already open"


@pytest.mark.parametrize(
    "options", [["-arch=sm_80", "-std=c++17", "--use_fast_math", "-DN=3", "-D", "M", "-UX"]]
)
def test_nvrtc_options_that_name_no_file_pass(
    executor: SessionExecutor, options: list[str]
) -> None:
    source = 'extern "C" __global__ void k(int* p) { *p = N + M; }\n'
    load = pb.ModuleLoad(module=1, cuda_source=source, options=options)
    (reply,) = run(executor, module_load=load)
    assert not reply.HasField("error"), reply.error


def _batch(*requests: pb.Request) -> pb.Batch:
    return pb.Batch(requests=list(requests))


def _negate(ptr: int, count: int = 4) -> pb.Request:
    desc = pb.ArrayDesc(ptr=ptr, shape=[count], strides=[8], dtype="<f8")
    return pb.Request(
        array_op=pb.ArrayOp(function="negative", args=[pb.Operand(array=desc)], out=[desc])
    )


def _read(executor: SessionExecutor, ptr: int, count: int = 4) -> np.ndarray:
    replies = run(executor, memcpy_dtoh=pb.MemcpyDtoH(src=ptr, size=8 * count))
    return np.frombuffer(b"".join(reply.data for reply in replies), np.float64)


def test_a_kept_view_goes_with_the_memory_it_lies_in(executor: SessionExecutor) -> None:
    """Array operations in a batch take the fast path and keep their checked views; freeing
    the allocation drops them, so the same descriptor is checked (and refused) again."""
    ptr = malloc(executor, 32)
    data = np.arange(4, dtype=np.float64)
    (copied,) = run(executor, memcpy_htod=pb.MemcpyHtoD(dst=ptr, size=32, data=data.tobytes()))
    assert not copied.HasField("error")
    (reply,) = run(executor, batch=_batch(_negate(ptr), _negate(ptr), _negate(ptr)), wait=True)
    assert not reply.HasField("error")
    np.testing.assert_array_equal(_read(executor, ptr), -data)
    assert run(executor, wait=False, free=pb.Free(ptr=ptr)) == []
    (reply,) = run(executor, batch=_batch(_negate(ptr)), wait=True)
    assert reply.error.name == "cudaErrorInvalidValue"
    assert "not inside an allocation" in reply.error.message
    (reply,) = run(executor, batch=_batch(_negate(ptr, 1 << 20)), wait=True)  # still checked
    assert reply.error.name == "cudaErrorInvalidValue"


def test_an_error_in_a_batch_of_array_operations_is_held_and_the_rest_run(
    executor: SessionExecutor,
) -> None:
    ptr = malloc(executor, 32)
    bad = pb.Request(array_op=pb.ArrayOp(function="no-such-function"))
    (reply,) = run(executor, batch=_batch(_negate(ptr), bad, _negate(ptr)), wait=True)
    assert reply.error.name == "cudaErrorNotSupported"  # the first error, at the sync
    (ok,) = run(executor, device_synchronize=pb.DeviceSynchronize())
    assert not ok.HasField("error")
