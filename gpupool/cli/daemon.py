"""``gpupool daemon``: serve this host's GPUs (or emulated ones) until stopped."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
from typing import Any

from gpupool.cli.options import (
    add_daemon_options,
    add_tls_options,
    address,
    factor,
    listen_address,
    start_daemon,
    tls_files,
)
from gpupool.errors import GpupoolError
from gpupool.units import format_size

NAME = "daemon"


def add(commands: Any) -> None:
    parser = commands.add_parser(
        NAME,
        help="serve this host's GPUs (or emulated ones)",
        description="Serve this host's GPUs (CuPy) or emulated devices to gpupool clients over"
        " gRPC, tcp:// and shm:// (and ucx:// where installed), one worker process a session;"
        " with --scheduler, as a node of that pool, opening sessions only with its grants.",
    )
    parser.add_argument(
        "--listen",
        type=listen_address,
        default="127.0.0.1:7001",
        metavar="HOST:PORT",
        help="(default 127.0.0.1:7001; port 0 picks a free one)",
    )
    add_daemon_options(parser, log_level="info")
    pool = parser.add_argument_group("joining a pool (sessions then need the scheduler's grants)")
    pool.add_argument(  # no $GPUPOOL_SCHEDULER default: a daemon joins a pool only when told
        "--scheduler", type=address, metavar="HOST:PORT", help="register with this pool scheduler"
    )
    pool.add_argument(
        "--name", default=socket.gethostname(), help="this node's name in the pool (default: host)"
    )
    pool.add_argument(
        "--secret-file", metavar="FILE", help="the cluster secret (default $GPUPOOL_CLUSTER_SECRET)"
    )
    pool.add_argument(
        "--oversubscribe",
        type=factor,
        default=1.0,
        metavar="F",
        help="fractions on one GPU may sum to F (default 1: none)",
    )
    pool.add_argument(
        "--trusted-emulator",
        action="store_true",
        help="serve a pool with an emulator whose kernels cannot be confined (not root): for"
        " a development pool of trusted users only (also $GPUPOOL_TRUSTED_EMULATOR=1)",
    )
    add_tls_options(parser, "clients", "TLS (gRPC only: tcp:// is then not offered)")


def main(args: argparse.Namespace) -> int:
    from gpupool.grants import load_secret
    from gpupool.server.daemon import PoolMembership

    tls = tls_files(args, NAME)
    if isinstance(tls, int):
        return tls
    try:
        pool = None
        if args.scheduler:
            secret = load_secret(args.secret_file)
            if args.secret_file and os.stat(args.secret_file).st_mode & 0o004:
                print(  # a confined worker runs as another user, and could read it
                    f"gpupool daemon: warning: {args.secret_file} is world-readable",
                    file=sys.stderr,
                )
            pool = PoolMembership(args.scheduler, args.name, secret, args.oversubscribe)
        daemon = start_daemon(args, args.listen, pool, tls, args.trusted_emulator)
    except (GpupoolError, OSError, ValueError) as exc:
        print(f"gpupool daemon: {exc}", file=sys.stderr)
        return 1
    emulated = f", {args.emu_devices} x {format_size(args.emu_memory)}"
    joined = f" in the pool of {args.scheduler} as {args.name}" if args.scheduler else ""
    print(
        f"gpupool daemon on {daemon.address} ({daemon.backend}"
        + (emulated if daemon.backend == "emu" else "")
        + ")"
        + joined,
        flush=True,
    )
    print("endpoints: " + " ".join(daemon.endpoints), flush=True)
    signal.signal(signal.SIGTERM, lambda *_: daemon.server.stop(1))
    try:
        daemon.wait()
    except KeyboardInterrupt:
        pass
    daemon.stop()
    return 0
