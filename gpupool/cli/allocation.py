"""The allocation options that ``gpupool request`` and ``gpupool run`` share, and holding one.

Not a subcommand: the helpers those two use.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import signal
import sys
import tempfile
from collections.abc import Iterator

from gpupool.cli.options import add_scheduler_option, count, fraction, seconds, size, start_daemon
from gpupool.client.lease import ENV_SCHEDULER, ENV_TOKEN, Lease, allocate, scheduler_address
from gpupool.errors import AllocationError, GpupoolError


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
        type=seconds,
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
def local_pool(args: argparse.Namespace) -> Iterator[str]:
    """A scheduler and one daemon of this host on loopback, joined by a fresh secret, for as
    long as the block runs: what ``gpupool run -n`` allocates from when no scheduler is named
    (the daemon options say what the daemon serves). Yields the scheduler's address."""
    from gpupool.scheduler.service import start_scheduler
    from gpupool.server.daemon import PoolMembership

    secret = secrets.token_bytes(32)
    # an open pool of its own: a token for some other pool would be unknown to it, and
    # refused, here and in the command's processes (which inherit this environment)
    os.environ.pop(ENV_TOKEN, None)
    with tempfile.TemporaryDirectory(prefix="gpupool-pool-") as folder:
        scheduler = start_scheduler("127.0.0.1:0", os.path.join(folder, "pool.db"), secret)
        try:
            daemon = start_daemon(
                args, "127.0.0.1:0", PoolMembership(scheduler.address, "local", secret)
            )
            try:
                if daemon.registration is None or not daemon.registration.registered.wait(30):
                    raise GpupoolError("the embedded daemon did not join the embedded scheduler")
                yield scheduler.address
            finally:
                daemon.stop()
        finally:
            scheduler.stop()


def scheduler_named(args: argparse.Namespace) -> bool:
    """True when the options or the environment name a scheduler."""
    return bool(args.scheduler or os.environ.get(ENV_SCHEDULER))
