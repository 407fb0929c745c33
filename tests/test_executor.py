"""The session executor's protocol, driven directly on the emulator backend (no sockets)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from gpupool.proto import gpupool_pb2 as pb
from gpupool.server.backends.emu import EmuBackend, MemoryLedger
from gpupool.server.executor import CHUNK_SIZE, SessionExecutor


@pytest.fixture
def executor() -> Iterator[SessionExecutor]:
    ledger = MemoryLedger.create(1 << 30, slots=2)
    yield SessionExecutor(EmuBackend(0, ledger, slot=0), translate=lambda exc: exc)
    ledger.remove()


def run(executor: SessionExecutor, **call: object) -> list[pb.Reply]:
    wait = bool(call.pop("wait", True))
    return list(executor.handle(pb.Request(wait=wait, **call)))  # type: ignore[arg-type]


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
