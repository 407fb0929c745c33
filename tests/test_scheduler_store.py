"""The scheduler's SQLite file: WAL, synced commits, and everything back after a reopen."""

from __future__ import annotations

from pathlib import Path

from gpupool.scheduler import state as sm
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
        assert reopened.load() == ([node], [kept])
    finally:
        reopened.close()
