"""The scheduler's shell without sockets: its SQLite file, and callers that go away."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gpupool.scheduler import state as sm
from gpupool.scheduler.service import SchedulerService, start_scheduler
from gpupool.scheduler.store import Store


def test_the_store_is_durable_wal_and_gives_back_what_it_was_given(tmp_path: Path) -> None:
    path = str(tmp_path / "scheduler.db")
    node = sm.Node("a", "a:7001", (sm.Gpu(0, "u0", "emu", 8 << 30),), oversubscription=1.5)
    part = sm.Slice("a", "a:7001", 0, "emu", 500_000, 4 << 30)
    kept = sm.Allocation("kept", (part,), ttl=60.0, expires_at=160.0, owner="me@host")
    store = Store(path)
    try:
        assert store._db.execute("pragma journal_mode").fetchone() == ("wal",)
        assert store._db.execute("pragma synchronous").fetchone() == (2,)  # full
        store.save_node(node)
        store.save_allocation(kept)
        store.save_allocation(sm.Allocation("gone", (part,), 60.0, 160.0))
        store.delete_allocation("gone")
    finally:
        store.close()
    reopened = Store(path)
    try:
        assert reopened.load() == ([node], [kept], [])
    finally:
        reopened.close()


def test_an_allocation_granted_just_as_its_caller_goes_away_is_given_back(tmp_path: Path) -> None:
    """The waiting request is granted, then its caller is cancelled before it hears: the
    allocation must not sit on the GPU until its lease runs out."""

    async def scenario() -> sm.SchedulerState:
        machine = sm.SchedulerState()
        store = Store(str(tmp_path / "scheduler.db"))
        service = SchedulerService(machine, store, b"secret", 2.0, clock=lambda: 0.0)
        service.apply(sm.Register(sm.Node("a", "a:1", (sm.Gpu(0, "u", "emu", 1 << 30),)), 0.0))
        whole = sm.Request(1, fraction=1.0, ttl=3600.0)
        holder = await service._ask(lambda ask: sm.Allocate(ask, whole, "held", 0.0))
        assert isinstance(holder, sm.Allocation)
        waiting = asyncio.create_task(
            service._ask(
                lambda ask: sm.Allocate(ask, sm.Request(1, fraction=1.0, wait=60), "w", 0.0)
            )
        )
        await asyncio.sleep(0)  # it waits in the queue
        assert machine.waiting == 1
        service.apply(sm.Release(0, "held", 0.0))  # the waiter is granted...
        assert "w" in machine.allocations
        waiting.cancel()  # ...and its caller goes away before it resumes
        with pytest.raises(asyncio.CancelledError):
            await waiting
        store.close()
        return machine

    machine = asyncio.run(scenario())
    assert machine.allocations == {} and machine.used_units("a", 0) == 0


def test_a_second_scheduler_on_a_port_in_use_is_refused(tmp_path: Path) -> None:
    first = start_scheduler("127.0.0.1:0", str(tmp_path / "one.db"), b"secret")
    try:
        with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{first.port}"):
            start_scheduler(f"127.0.0.1:{first.port}", str(tmp_path / "two.db"), b"secret")
    finally:
        first.stop()


def test_a_state_database_that_cannot_be_opened_is_named(tmp_path: Path) -> None:
    not_a_database = tmp_path / "notes.txt"
    not_a_database.write_text("not sqlite " * 100)
    for db in (tmp_path / "no" / "such" / "folder.db", not_a_database):
        with pytest.raises(OSError, match=f"cannot open the state database {db}"):
            start_scheduler("127.0.0.1:0", str(db), b"secret")
