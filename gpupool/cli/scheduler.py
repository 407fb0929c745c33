"""``gpupool scheduler``: the pool scheduler, its state in one SQLite file."""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Any

from gpupool.cli.options import (
    add_db_option,
    add_log_level,
    add_tls_options,
    listen_address,
    seconds,
    tls_files,
)
from gpupool.errors import GpupoolError
from gpupool.grants import load_secret

NAME = "scheduler"


def add(commands: Any) -> None:
    parser = commands.add_parser(
        NAME,
        help="run the pool scheduler",
        description="Hand out whole, fractional and multi-node GPUs of the daemons that"
        " register here, under leases, with grants signed by the cluster secret"
        " ($GPUPOOL_CLUSTER_SECRET or --secret-file).",
    )
    parser.add_argument(
        "--listen",
        type=listen_address,
        default="127.0.0.1:7000",
        metavar="HOST:PORT",
        help="(default 127.0.0.1:7000; port 0 picks a free one)",
    )
    add_db_option(parser)
    parser.add_argument("--secret-file", metavar="FILE", help="the cluster secret")
    parser.add_argument(
        "--node-timeout",
        type=seconds,
        default=10.0,
        metavar="S",
        help="a node silent this long is down (default 10)",
    )
    parser.add_argument(
        "--heartbeat",
        type=seconds,
        default=2.0,
        metavar="S",
        help="how often nodes send heartbeats (default 2)",
    )
    parser.add_argument(
        "--require-tokens",
        action="store_true",
        help="refuse client calls without a live API token (gpupool token create); without"
        " it, callers without a token may use the pool (an open pool, for trusted networks)",
    )
    add_tls_options(parser, "clients")
    add_log_level(parser, "info")


def main(args: argparse.Namespace) -> int:
    from gpupool.scheduler.service import start_scheduler

    if not 0 < args.heartbeat < args.node_timeout:
        print(
            f"gpupool scheduler: --heartbeat ({args.heartbeat:g} s) must be more than 0 and"
            f" less than --node-timeout ({args.node_timeout:g} s), or nodes that beat on time"
            " count as down",
            file=sys.stderr,
        )
        return 2
    tls = tls_files(args, NAME)
    if isinstance(tls, int):
        return tls
    try:
        secret = load_secret(args.secret_file)
        scheduler = start_scheduler(
            args.listen,
            args.db,
            secret,
            args.node_timeout,
            args.heartbeat,
            tls=tls,
            require_tokens=args.require_tokens,
        )
    except (GpupoolError, OSError) as exc:
        print(f"gpupool scheduler: {exc}", file=sys.stderr)
        return 1
    how = ", TLS" if tls else ""
    how += ", API tokens required" if args.require_tokens else ", open to callers without a token"
    print(f"gpupool scheduler on {scheduler.address} (state in {args.db}{how})", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: scheduler.stop())
    try:
        scheduler.wait()
    except KeyboardInterrupt:
        pass
    scheduler.stop()
    return 0
