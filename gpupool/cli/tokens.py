"""``gpupool token``: the scheduler's API tokens, made, listed and revoked by its admin.

The commands work on the scheduler's state file (``--db``), beside a running scheduler or
without one: whoever may write that file administers the pool. A token is printed once, when
it is made; the file keeps only its hash.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import time
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from gpupool.cli.options import add_db_option
from gpupool.scheduler import limits

if TYPE_CHECKING:
    from gpupool.scheduler.store import Store

NAME = "token"


def add(commands: Any) -> None:
    parser = commands.add_parser(
        NAME,
        help="make, list and revoke API tokens (admin)",
        description="API tokens of the scheduler whose state file is --db. Clients send theirs"
        " as GPUPOOL_TOKEN; a scheduler started with --require-tokens refuses calls without.",
    )
    actions = parser.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="make a token and print it (once)")
    create.add_argument("--team", required=True, help="the team whose quota the token uses")
    create.add_argument("--user", required=True, help="who holds it")
    add_db_option(create)
    listing = actions.add_parser("list", help="every token, without its secret")
    add_db_option(listing)
    revoke = actions.add_parser("revoke", help="revoke a token: its next call is refused")
    revoke.add_argument("id", metavar="ID", help="the token's id (from list or create)")
    add_db_option(revoke)


def open_store(db: str, command: str) -> Store | None:
    """The state file's store; None (said on stderr) where it cannot be opened."""
    from gpupool.scheduler.store import Store

    try:
        return Store(db)
    except sqlite3.Error as exc:
        print(f"gpupool {command}: cannot open the state database {db}: {exc}", file=sys.stderr)
        return None


def main(args: argparse.Namespace) -> int:
    if args.action == "create":
        for field in ("team", "user"):
            problem = limits.text(field, getattr(args, field))
            if problem or not getattr(args, field):
                print(f"gpupool token: {problem or f'{field}: give one'}", file=sys.stderr)
                return 2
    store = open_store(args.db, NAME)
    if store is None:
        return 1
    try:
        if args.action == "create":
            token_id, token = store.create_token(args.team, args.user, time.time())
            print(token)
            print(
                f"token {token_id} for {args.user} of team {args.team}: shown only now;"
                " give it to its user as GPUPOOL_TOKEN",
                file=sys.stderr,
            )
        elif args.action == "list":
            table = Table(title=f"API tokens of {args.db}")
            for column in ("id", "team", "user", "created", "revoked"):
                table.add_column(column)
            for row in store.tokens():
                table.add_row(
                    row.id,
                    row.team,
                    row.user,
                    _when(row.created_at),
                    _when(row.revoked_at) if row.revoked_at else "-",
                )
            Console().print(table)
        elif not store.revoke_token(args.id, time.time()):
            print(f"gpupool token: no live token {args.id}", file=sys.stderr)
            return 1
        else:
            print(f"revoked {args.id}")
    finally:
        store.close()
    return 0


def _when(moment: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(moment))
