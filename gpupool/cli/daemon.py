"""``gpupool daemon``: serve this host's GPUs (or emulated ones) until stopped."""

from __future__ import annotations

import argparse
import signal
from typing import Any

from gpupool.cli.options import add_daemon_options, start_daemon
from gpupool.units import format_size

NAME = "daemon"


def add(commands: Any) -> None:
    parser = commands.add_parser(NAME, help="serve this host's GPUs (or emulated ones)")
    parser.add_argument(
        "--listen", default="127.0.0.1:7001", metavar="HOST:PORT", help="(default 127.0.0.1:7001)"
    )
    add_daemon_options(parser, log_level="info")


def main(args: argparse.Namespace) -> int:
    daemon = start_daemon(args, args.listen)
    emulated = f", {args.emu_devices} x {format_size(args.emu_memory)}"
    print(
        f"gpupool daemon on {daemon.address} ({daemon.backend}"
        + (emulated if daemon.backend == "emu" else "")
        + ")",
        flush=True,
    )
    signal.signal(signal.SIGTERM, lambda *_: daemon.server.stop(1))
    try:
        daemon.wait()
    except KeyboardInterrupt:
        pass
    daemon.stop()
    return 0
