"""The scheduler's state on disk: SQLite in WAL mode.

Nodes and allocations are rows of JSON of the state machine's dataclasses, read whole at
start-up (:meth:`Store.load`), so they need no schema beyond a key and a document. Every
change is committed before the reply that depends on it is sent, so a scheduler that dies
and restarts loses no allocation it has handed out.

API tokens and team quotas live here too, and are what the admin commands (``gpupool token``,
``gpupool team``) write, from their own connection, while the scheduler runs: the scheduler
looks a token up at each call, so a revoked token is refused from its next call on. A token
is ``gpt_ID_SECRET``: the ID is public (listings, revocation), the SECRET is 256 random bits
of which only the SHA-256 is stored (a slow hash adds nothing to a secret that cannot be
guessed), so the file does not give tokens away.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import sqlite3
from dataclasses import asdict, dataclass
from typing import Any

from gpupool.scheduler.state import Allocation, Gpu, Node, Slice, TeamQuota

SCHEMA = """
create table if not exists nodes (name text primary key, doc text not null);
create table if not exists allocations (id text primary key, doc text not null);
create table if not exists tokens (
    id text primary key, team text not null, user text not null, hash text not null,
    created_at real not null, revoked_at real
);
create table if not exists teams (
    name text primary key, quota text not null default '{}', gpu_seconds real not null default 0
);
"""
TOKEN_PREFIX = "gpt_"
MAX_TOKEN = 128  # characters: a token is about 60


@dataclass(frozen=True)
class Identity:
    """Who a token says the caller is."""

    token_id: str
    team: str
    user: str


@dataclass(frozen=True)
class TokenRow:
    """A token as ``gpupool token list`` shows it (never its secret)."""

    id: str
    team: str
    user: str
    created_at: float
    revoked_at: float | None


class Store:
    def __init__(self, path: str) -> None:
        self._db = sqlite3.connect(path, isolation_level=None)  # autocommit: one row a change
        self._db.execute("pragma journal_mode=wal")
        # every commit synced before its reply goes out: with ``normal``, WAL survives the
        # process's crash but may lose the last commits to a power cut or the host's crash,
        # and a scheduler that forgot allocations it handed out would hand them out again
        self._db.execute("pragma synchronous=full")
        self._db.execute("pragma busy_timeout=5000")  # the admin commands write beside it
        self._db.executescript(SCHEMA)

    def load(self) -> tuple[list[Node], list[Allocation], list[str]]:
        """Every stored node and allocation, and the keys of rows that cannot be read at
        all (not JSON, fields missing), which are left out, as the state machine leaves out
        rows that fail its checks (``SchedulerState.restore``)."""
        unreadable: list[str] = []
        nodes = self._read("nodes", "name", _node, unreadable)
        allocations = self._read("allocations", "id", _allocation, unreadable)
        return nodes, allocations, unreadable

    def save_node(self, node: Node) -> None:
        doc = asdict(node)
        doc.pop("figures")  # live figures come with the next heartbeat
        self._put("nodes", node.name, doc)

    def save_allocation(self, allocation: Allocation) -> None:
        self._put("allocations", allocation.id, asdict(allocation))

    def delete_allocation(
        self, allocation_id: str, team: str = "", gpu_seconds: float = 0.0
    ) -> None:
        """Forget an allocation, adding what it used to its team's account, in one commit."""
        with self._transaction():
            self._db.execute("delete from allocations where id = ?", (allocation_id,))
            if gpu_seconds > 0:
                self._db.execute("insert or ignore into teams (name) values (?)", (team,))
                self._db.execute(
                    "update teams set gpu_seconds = gpu_seconds + ? where name = ?",
                    (gpu_seconds, team),
                )

    def delete_node(self, name: str) -> None:
        self._db.execute("delete from nodes where name = ?", (name,))

    # identities

    def create_token(self, team: str, user: str, now: float) -> tuple[str, str]:
        """A new token for ``user`` of ``team``: (its id, the token, to be shown once)."""
        while True:
            token_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
            try:
                self._db.execute(
                    "insert into tokens (id, team, user, hash, created_at) values (?, ?, ?, ?, ?)",
                    (token_id, team, user, _hash(secret), now),
                )
            except sqlite3.IntegrityError:  # an id drawn twice: draw again
                continue
            return token_id, f"{TOKEN_PREFIX}{token_id}_{secret}"

    def tokens(self) -> list[TokenRow]:
        rows = self._db.execute(
            "select id, team, user, created_at, revoked_at from tokens order by created_at"
        )
        return [TokenRow(*row) for row in rows]

    def revoke_token(self, token_id: str, now: float) -> bool:
        """Revoke a token by its id; False when no live token has that id."""
        cursor = self._db.execute(
            "update tokens set revoked_at = ? where id = ? and revoked_at is null",
            (now, token_id),
        )
        return cursor.rowcount == 1

    def identity(self, token: str) -> Identity | None:
        """Who ``token`` belongs to; None for a malformed, unknown or revoked token."""
        if len(token) > MAX_TOKEN or not token.startswith(TOKEN_PREFIX):
            return None
        token_id, _, secret = token.removeprefix(TOKEN_PREFIX).partition("_")
        row = self._one(
            "select team, user, hash from tokens where id = ? and revoked_at is null", token_id
        )
        if row is None or not hmac.compare_digest(row[2], _hash(secret)):
            return None
        return Identity(token_id, row[0], row[1])

    # teams

    def set_quota(self, team: str, quota: TeamQuota) -> None:
        doc = json.dumps({k: v for k, v in asdict(quota).items() if v is not None})
        self._db.execute(
            "insert into teams (name, quota) values (?, ?)"
            " on conflict (name) do update set quota = excluded.quota",
            (team, doc),
        )

    def quota(self, team: str) -> TeamQuota | None:
        """``team``'s quota; None where it has none (or has no row)."""
        row = self._one("select quota from teams where name = ?", team)
        return _quota(row[0]) if row else None

    def teams(self) -> dict[str, tuple[TeamQuota | None, float]]:
        """Every team with a row: (its quota, GPU-seconds of its ended allocations)."""
        rows = self._db.execute("select name, quota, gpu_seconds from teams order by name")
        return {name: (_quota(doc), used) for name, doc, used in rows}

    def close(self) -> None:
        self._db.close()

    def _read(self, table: str, key: str, make: Any, unreadable: list[str]) -> list[Any]:
        read = []
        for name, doc in self._db.execute(f"select {key}, doc from {table}").fetchall():
            try:
                read.append(make(json.loads(doc)))
            except (ValueError, TypeError, KeyError, AttributeError):
                unreadable.append(f"{table} {name}")
        return read

    def _one(self, query: str, key: str) -> tuple[Any, ...] | None:
        """The first row of ``query`` for ``key``. All rows are read: a cursor left open
        would hold its read transaction, and the scheduler would go on seeing the file as
        it was then (a revoked token still live)."""
        rows = self._db.execute(query, (key,)).fetchall()
        return rows[0] if rows else None

    def _transaction(self) -> sqlite3.Connection:
        self._db.execute("begin immediate")
        return self._db  # its context manager commits, or rolls back on an exception

    def _put(self, table: str, key: str, doc: dict[str, Any]) -> None:
        self._db.execute(f"insert or replace into {table} values (?, ?)", (key, json.dumps(doc)))


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _quota(doc: str) -> TeamQuota | None:
    fields = json.loads(doc)
    return TeamQuota(**fields) if fields else None


def _node(doc: dict[str, Any]) -> Node:
    return Node(**{**doc, "gpus": tuple(Gpu(**gpu) for gpu in doc["gpus"])})


def _allocation(doc: dict[str, Any]) -> Allocation:
    return Allocation(**{**doc, "slices": tuple(Slice(**part) for part in doc["slices"])})
