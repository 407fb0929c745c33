"""A session's memory quota, enforced in its worker's executor (no sockets)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gpupool.proto import gpupool_pb2 as pb
from gpupool.server.backends.emu import EmuBackend, MemoryLedger
from gpupool.server.executor import SessionExecutor

MiB = 1 << 20


class PooledEmu(EmuBackend):
    """The emulator with a memory pool of its own, as CuPy's pool is in a GPU worker."""

    pool_bytes = 0
    limit: int | None = None

    def own_memory(self) -> int:
        return self.pool_bytes

    def limit_own_memory(self, limit: int) -> None:
        self.limit = limit


@pytest.fixture
def backend() -> Iterator[PooledEmu]:
    ledger = MemoryLedger.create(1 << 30, slots=2)
    yield PooledEmu(0, ledger, slot=0)
    ledger.close()


def call(executor: SessionExecutor, **request: object) -> pb.Reply:
    (reply,) = executor.handle(pb.Request(wait=True, **request))  # type: ignore[arg-type]
    return reply


def opened(backend: PooledEmu, quota: int) -> tuple[SessionExecutor, pb.Reply]:
    executor = SessionExecutor(backend, translate=lambda exc: exc)
    limits = pb.SessionLimits(allocation="a", memory=quota, fraction=0.5)
    return executor, call(executor, open=pb.OpenSession(device=0, limits=limits))


def test_the_quota_is_the_devices_memory_and_not_a_byte_more(backend: PooledEmu) -> None:
    executor, reply = opened(backend, 64 * MiB)
    assert reply.opened.properties.total_memory == 64 * MiB
    assert call(executor, mem_get_info=pb.MemGetInfo()).mem_info.total == 64 * MiB
    first = call(executor, malloc=pb.Malloc(size=48 * MiB)).ptr
    assert backend.limit == 16 * MiB  # what is left, for the backend's own pool
    refused = call(executor, malloc=pb.Malloc(size=16 * MiB + 1))
    assert refused.error.name == "cudaErrorMemoryAllocation"
    assert "quota is 64MiB and 48MiB of it is in use" in refused.error.message
    assert call(executor, mem_get_info=pb.MemGetInfo()).mem_info.free == 16 * MiB
    assert not call(executor, malloc=pb.Malloc(size=16 * MiB)).HasField("error")  # exactly fits
    list(executor.handle(pb.Request(free=pb.Free(ptr=first))))
    assert call(executor, mem_get_info=pb.MemGetInfo()).mem_info.free == 48 * MiB
    assert backend.limit == 48 * MiB


def test_the_backends_own_memory_counts_against_the_quota(backend: PooledEmu) -> None:
    executor, _ = opened(backend, 64 * MiB)
    assert backend.limit == 64 * MiB
    backend.pool_bytes = 40 * MiB  # array temporaries held by the pool
    assert call(executor, malloc=pb.Malloc(size=32 * MiB)).error.name == (
        "cudaErrorMemoryAllocation"
    )
    assert call(executor, mem_get_info=pb.MemGetInfo()).mem_info.free == 24 * MiB
    assert not call(executor, malloc=pb.Malloc(size=24 * MiB)).HasField("error")


def test_a_session_without_limits_has_the_whole_device(backend: PooledEmu) -> None:
    executor = SessionExecutor(backend, translate=lambda exc: exc)
    reply = call(executor, open=pb.OpenSession(device=0))
    assert reply.opened.properties.total_memory == 1 << 30
    assert not call(executor, malloc=pb.Malloc(size=512 * MiB)).HasField("error")
    assert backend.limit is None
