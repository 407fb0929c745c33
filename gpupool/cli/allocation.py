"""The allocation options that ``gpupool request`` and ``gpupool run`` share, and holding one.

Not a subcommand: the helpers those two use.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from collections.abc import Iterator

from gpupool.cli.options import (
    add_scheduler_option,
    count,
    fraction,
    positive_seconds,
    seconds,
    size,
)
from gpupool.client.lease import ENV_SCHEDULER, ENV_TOKEN, Lease, allocate, scheduler_address
from gpupool.elastic.embedded import EmbeddedPool, PoolSettings
from gpupool.errors import AllocationError


def add_allocation_options(
    parser: argparse._ActionsContainer, ttl: float, count_default: int | None
) -> None:
    parser.add_argument(
        "-n",
        dest="count",
        type=count,
        default=count_default,
        metavar="N",
        help=f"GPUs to allocate (default {count_default or 'none: use --daemons'})",
    )
    share = parser.add_mutually_exclusive_group()
    share.add_argument(
        "--fraction",
        type=fraction,
        metavar="F",
        help="share of each GPU, 0.01 <= F <= 1 (default 1)",
    )
    share.add_argument("--memory", type=size, metavar="SIZE", help="memory of each GPU, e.g. 4GiB")
    parser.add_argument(
        "--policy",
        choices=("pack", "spread"),
        default="pack",
        help="pack: fill partly used GPUs first; spread: empty GPUs on different nodes",
    )
    parser.add_argument("--same-node", action="store_true", help="all GPUs on one node")
    parser.add_argument(
        "--ttl",
        type=positive_seconds,
        default=ttl,
        metavar="S",
        help=f"lease time-to-live, renewed while in use (default {ttl:g})",
    )
    parser.add_argument(
        "--wait",
        type=seconds,
        default=0.0,
        metavar="S",
        help="wait up to S seconds for capacity (default 0: fail at once)",
    )
    add_scheduler_option(parser)


def wants_allocation(args: argparse.Namespace) -> bool:
    """True when the options ask for GPUs from the pool."""
    return any(
        value is not None for value in (args.count, args.fraction, args.memory, args.scheduler)
    )


def allocate_from(args: argparse.Namespace) -> Lease:
    """The allocation the options describe (AllocationError with the reason if none)."""
    return allocate(
        scheduler_address(args.scheduler),
        args.count or 1,
        fraction=args.fraction,
        memory=args.memory,
        policy=args.policy,
        same_node=args.same_node,
        ttl=args.ttl,
        wait=args.wait,
    )


@contextlib.contextmanager
def held(args: argparse.Namespace) -> Iterator[Lease]:
    """An allocation, released however the block ends: normally, by an error, by Ctrl-C
    or by SIGTERM (turned into SystemExit so that the release runs)."""
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    try:
        lease = allocate_from(args)
        try:
            yield lease
        finally:
            _release(lease)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _release(lease: Lease) -> None:
    """Give ``lease`` back; if the scheduler cannot be told, say so and let the lease run out
    (the command's own exit status still stands)."""
    try:
        lease.release()
    except AllocationError as exc:
        print(
            f"gpupool: allocation {lease.id} not released ({exc.reason}); its lease ends"
            f" on its own within {lease.ttl:g} s",
            file=sys.stderr,
        )


@contextlib.contextmanager
def local_pool(args: argparse.Namespace) -> Iterator[EmbeddedPool]:
    """The embedded pool (``gpupool.elastic.embedded``) for as long as the block runs: what
    ``gpupool run -n`` allocates from when no scheduler is named (the daemon options say
    what its daemon serves)."""
    # an open pool of its own: a token for some other pool would be unknown to it, and
    # refused, here and in the command's processes (which inherit this environment)
    os.environ.pop(ENV_TOKEN, None)
    settings = PoolSettings(args.backend, args.emu_devices, args.emu_memory, args.warm)
    pool = EmbeddedPool(settings, "--emu-devices N and --emu-memory SIZE make it larger")
    try:
        yield pool
    finally:
        pool.stop()


def scheduler_named(args: argparse.Namespace) -> bool:
    """True when the options or the environment name a scheduler."""
    return bool(args.scheduler or os.environ.get(ENV_SCHEDULER))
