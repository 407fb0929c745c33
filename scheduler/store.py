"""The scheduler's state on disk: SQLite in WAL mode, one row a node and one an allocation.

Rows hold JSON of the state machine's dataclasses; the database is only ever read whole at
start-up (:meth:`Store.load`), so it needs no schema beyond a key and a document. Every
change is committed before the reply that depends on it is sent, so a scheduler that dies
and restarts loses no allocation it has handed out.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import asdict
from typing import Any

from gpupool.scheduler.state import Allocation, Gpu, Node, Slice

SCHEMA = """
create table if not exists nodes (name text primary key, doc text not null);
create table if not exists allocations (id text primary key, doc text not null);
"""


class Store:
    def __init__(self, path: str) -> None:
        self._db = sqlite3.connect(path, isolation_level=None)  # autocommit: one row a change
        self._db.execute("pragma journal_mode=wal")
        # every commit synced before its reply goes out: with ``normal``, WAL survives the
        # process's crash but may lose the last commits to a power cut or the host's crash,
        # and a scheduler that forgot allocations it handed out would hand them out again
        self._db.execute("pragma synchronous=full")
        self._db.executescript(SCHEMA)

    def load(self) -> tuple[list[Node], list[Allocation]]:
        nodes = [_node(json.loads(doc)) for (doc,) in self._db.execute("select doc from nodes")]
        allocations = [
            _allocation(json.loads(doc))
            for (doc,) in self._db.execute("select doc from allocations")
        ]
        return nodes, allocations

    def save_node(self, node: Node) -> None:
        doc = asdict(node)
        doc.pop("figures")  # live figures come with the next heartbeat
        self._put("nodes", node.name, doc)

    def save_allocation(self, allocation: Allocation) -> None:
        self._put("allocations", allocation.id, asdict(allocation))

    def delete_allocation(self, allocation_id: str) -> None:
        self._db.execute("delete from allocations where id = ?", (allocation_id,))

    def close(self) -> None:
        self._db.close()

    def _put(self, table: str, key: str, doc: dict[str, Any]) -> None:
        self._db.execute(f"insert or replace into {table} values (?, ?)", (key, json.dumps(doc)))


def _node(doc: dict[str, Any]) -> Node:
    return Node(**{**doc, "gpus": tuple(Gpu(**gpu) for gpu in doc["gpus"])})


def _allocation(doc: dict[str, Any]) -> Allocation:
    return Allocation(**{**doc, "slices": tuple(Slice(**part) for part in doc["slices"])})
