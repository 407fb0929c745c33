"""``gpupool smi``: a remote nvidia-smi for the whole pool, and the leases that hold it."""

from __future__ import annotations

import argparse
import time
from typing import Any

from rich.table import Table

from gpupool.cli.options import add_scheduler_option, console
from gpupool.cli.pool_list import fetch, teams_table
from gpupool.units import format_size

NAME = "smi"


def add(commands: Any) -> None:
    parser = commands.add_parser(
        NAME,
        help="utilisation, memory and sessions of every GPU",
        description="A remote nvidia-smi for the whole pool: each GPU's node and daemon"
        " address, utilisation, memory, free fraction and open sessions, then the leases"
        " that hold GPUs and when they expire.",
    )
    add_scheduler_option(parser)


def main(args: argparse.Namespace) -> int:
    state = fetch(args, NAME)
    if state is None:
        return 1
    out = console()
    gpus = Table(title="GPUs")
    for column in ("node", "GPU", "model", "util", "memory used/total", "free", "sessions"):
        gpus.add_column(column)
    for gpu in state.gpus:
        sessions = [allocation or "(no lease)" for allocation in gpu.sessions]
        gpus.add_row(
            f"{gpu.node} ({gpu.address})" + ("" if gpu.up else " DOWN"),
            str(gpu.index),
            gpu.name,
            f"{gpu.utilization}%",
            f"{format_size(gpu.memory_used)} / {format_size(gpu.memory)}",
            f"{gpu.fraction_free:.2f}",
            ", ".join(sessions) or "-",
        )
    out.print(gpus)
    leases = Table(title="leases")
    for column in ("allocation", "owner", "team/user", "GPUs", "expires in"):
        leases.add_column(column)
    now = time.time()
    for allocation in state.allocations:
        placed = ", ".join(
            f"{gpu.node}:{gpu.index} x {gpu.fraction:g} ({format_size(gpu.memory)})"
            for gpu in allocation.gpus
        )
        who = f"{allocation.team}/{allocation.user}" if allocation.team else "-"
        leases.add_row(
            allocation.id, allocation.owner, who, placed, f"{allocation.expires_at - now:.0f} s"
        )
    out.print(leases)
    if state.teams:
        out.print(teams_table(state))
    return 0
