"""``gpupool request``: allocate GPUs from the pool and print how to use them."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from gpupool.cli.allocation import add_allocation_options, allocate_from
from gpupool.client.lease import ENV_ALLOCATION
from gpupool.errors import GpupoolError
from gpupool.units import format_size

NAME = "request"


def add(commands: Any) -> None:
    parser = commands.add_parser(
        NAME,
        help="allocate GPUs from the pool",
        description="Allocate GPUs and print the allocation id, then the line to export so"
        " that programs use them. The lease lasts --ttl seconds, renewed while a program uses"
        " it; `gpupool release ID` gives the GPUs back.",
    )
    add_allocation_options(parser, ttl=3600.0, count_default=1)


def main(args: argparse.Namespace) -> int:
    try:
        lease = allocate_from(args)
    except GpupoolError as exc:
        print(f"gpupool request: {exc}", file=sys.stderr)
        return 1
    lease.close()  # stop renewing: the lease now lives on its time-to-live
    print(lease.id)
    print(f"export {ENV_ALLOCATION}={lease.env_value}", flush=True)
    for ordinal, gpu in enumerate(lease.placements):
        print(
            f"  device {ordinal}: {gpu.node} ({gpu.address}) GPU {gpu.index}, {gpu.name},"
            f" {format_size(gpu.memory)}, fraction {gpu.fraction:g}",
            file=sys.stderr,
        )
    return 0
