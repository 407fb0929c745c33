"""``gpupool team``: team quotas, set by the scheduler's admin, and what teams have used.

Like ``gpupool token``, it works on the scheduler's state file (``--db``); a running
scheduler applies a quota from the next ``Allocate`` on. What a team holds now is in
``gpupool list`` and ``gpupool smi`` (from the scheduler).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from rich.console import Console
from rich.table import Table

from gpupool.cli.options import add_db_option, size
from gpupool.cli.tokens import open_store
from gpupool.scheduler import limits
from gpupool.units import format_size

NAME = "team"
ANONYMOUS = "(no token)"


def add(commands: Any) -> None:
    parser = commands.add_parser(
        NAME,
        help="set team quotas, list them (admin)",
        description="Quotas of teams (the team of a caller's API token) on the scheduler whose"
        " state file is --db: what a team may hold at once. An Allocate past its quota is"
        " refused with RESOURCE_EXHAUSTED, 'quota: ...'.",
    )
    actions = parser.add_subparsers(dest="action", required=True)
    quota = actions.add_parser("quota", help="set a team's quota (options left out: no limit)")
    quota.add_argument(
        "team", metavar="TEAM", help=f"the team ('' for callers without a token, {ANONYMOUS})"
    )
    quota.add_argument("--gpus", type=_gpus, metavar="N", help="GPU-equivalents (0.5 a half)")
    quota.add_argument("--memory", type=size, metavar="SIZE", help="memory quotas in all, 64GiB")
    quota.add_argument("--allocations", type=_whole, metavar="N", help="allocations at once")
    add_db_option(quota)
    listing = actions.add_parser("list", help="every team's quota and GPU-seconds used")
    add_db_option(listing)


def main(args: argparse.Namespace) -> int:
    from gpupool.scheduler.state import TeamQuota

    if args.action == "quota" and (problem := limits.text("team", args.team)):
        print(f"gpupool team: {problem}", file=sys.stderr)
        return 2
    store = open_store(args.db, NAME)
    if store is None:
        return 1
    try:
        if args.action == "quota":
            store.set_quota(args.team, TeamQuota(args.gpus, args.memory, args.allocations))
            limit = describe(args.gpus, args.memory, args.allocations)
            print(f"team {args.team or ANONYMOUS}: {limit}")
            return 0
        table = Table(title=f"teams of {args.db}")
        for column in ("team", "quota", "GPU-hours used (ended allocations)"):
            table.add_column(column)
        for team, (quota, used) in store.teams().items():
            limit = describe(quota.gpus, quota.memory, quota.allocations) if quota else "none"
            table.add_row(team or ANONYMOUS, limit, f"{used / 3600:.2f}")
        Console().print(table)
        return 0
    finally:
        store.close()


def describe(gpus: float | None, memory: int | None, allocations: int | None) -> str:
    """A quota in words; 'no limit' where it sets none."""
    parts = []
    if gpus is not None:
        parts.append(f"{gpus:g} GPUs")
    if memory is not None:
        parts.append(format_size(memory))
    if allocations is not None:
        parts.append(f"{allocations} allocations")
    return ", ".join(parts) or "no limit"


def _gpus(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 1 << 20:  # NaN fails too
        raise argparse.ArgumentTypeError(f"a number of GPUs, 0 or more, not {text!r}")
    return value


def _whole(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"a whole number, 0 or more, not {text!r}")
    return int(text)
