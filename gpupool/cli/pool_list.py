"""``gpupool list``: the pool's GPUs, what is allocated of each, and which nodes are up."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from rich.table import Table

from gpupool.cli.options import add_scheduler_option, console
from gpupool.client.lease import SchedulerClient, scheduler_address
from gpupool.errors import GpupoolError
from gpupool.proto import scheduler_pb2 as spb
from gpupool.units import format_size

NAME = "list"


def add(commands: Any) -> None:
    parser = commands.add_parser(
        NAME,
        help="the pool's GPUs",
        description="List every GPU the scheduler knows: its node, model, memory used of its"
        " total, the fraction still free, and whether its node is up.",
    )
    add_scheduler_option(parser)


def fetch(args: argparse.Namespace, command: str) -> spb.PoolState | None:
    """The pool as the scheduler sees it; None (said on stderr) when it does not answer."""
    try:
        client = SchedulerClient(scheduler_address(args.scheduler))
        try:
            return client.pool()
        finally:
            client.close()
    except GpupoolError as exc:
        print(f"gpupool {command}: {exc}", file=sys.stderr)
        return None


def main(args: argparse.Namespace) -> int:
    state = fetch(args, NAME)
    if state is None:
        return 1
    table = Table(title=f"gpupool: {len(state.gpus)} GPUs")
    for column in ("node", "GPU", "model", "memory used/total", "fraction free", "state"):
        table.add_column(column, justify="right" if column == "GPU" else "left")
    for gpu in state.gpus:
        table.add_row(
            gpu.node,
            str(gpu.index),
            gpu.name,
            f"{format_size(gpu.memory_used)} / {format_size(gpu.memory)}",
            f"{gpu.fraction_free:.2f}",
            "up" if gpu.up else "down",
        )
    out = console()
    out.print(table)
    if state.teams:
        out.print(teams_table(state))
    return 0


def teams_table(state: spb.PoolState) -> Table:
    """What each team holds now against its quota, and what it has used."""
    table = Table(title="teams: held / quota")
    for column in ("team", "GPUs", "memory", "allocations", "GPU-hours used"):
        table.add_column(column)
    for team in state.teams:
        quota_gpus = f"{team.quota_gpus:g}" if team.HasField("quota_gpus") else "-"
        quota_memory = format_size(team.quota_memory) if team.HasField("quota_memory") else "-"
        quota_allocations = (
            str(team.quota_allocations) if team.HasField("quota_allocations") else "-"
        )
        table.add_row(
            team.team or "(no token)",
            f"{team.gpus:g} / {quota_gpus}",
            f"{format_size(team.memory)} / {quota_memory}",
            f"{team.allocations} / {quota_allocations}",
            f"{team.gpu_seconds / 3600:.2f}",
        )
    return table
