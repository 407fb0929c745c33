"""``gpupool release``: give an allocation's GPUs back to the pool."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from gpupool.cli.options import add_scheduler_option
from gpupool.client.lease import SchedulerClient, scheduler_address
from gpupool.errors import GpupoolError

NAME = "release"


def add(commands: Any) -> None:
    parser = commands.add_parser(
        NAME,
        help="give an allocation back to the pool",
        description="Release allocation ID: its GPUs go back to the pool at once, and the"
        " daemons end the sessions that use them.",
    )
    parser.add_argument("id", metavar="ID", help="the allocation id (from gpupool request)")
    add_scheduler_option(parser)


def main(args: argparse.Namespace) -> int:
    try:
        client = SchedulerClient(scheduler_address(args.scheduler))
        try:
            client.release(args.id)
        finally:
            client.close()
    except GpupoolError as exc:
        print(f"gpupool release: {exc}", file=sys.stderr)
        return 1
    print(f"released {args.id}")
    return 0
