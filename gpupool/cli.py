"""The ``gpupool`` command: ``daemon`` serves this host's GPUs; ``run`` runs a program on them."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from gpupool import logs
from gpupool.client.context import ENV_DAEMONS
from gpupool.units import format_size, parse_size

if TYPE_CHECKING:
    from gpupool.server.daemon import Daemon


def _size(text: str) -> int:
    try:
        size = parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    if size <= 0:
        raise argparse.ArgumentTypeError(f"a device needs memory, not {text!r}")
    return size


def _count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"not a positive count: {text!r}")
    return int(text)


def _add_daemon_options(parser: argparse.ArgumentParser, log_level: str) -> None:
    from gpupool.server.backends import BACKENDS

    parser.add_argument(
        "--backend", choices=BACKENDS, default="auto", help="auto: CuPy on a GPU, else emulator"
    )
    parser.add_argument(
        "--emu-devices", type=_count, default=2, metavar="N", help="emulated devices (default 2)"
    )
    parser.add_argument(
        "--emu-memory",
        type=_size,
        default=8 << 30,
        metavar="SIZE",
        help="memory of each emulated device, e.g. 8GiB (default)",
    )
    parser.add_argument(
        "--warm",
        type=int,
        default=1,
        metavar="N",
        help="started workers kept ready per device (default 1)",
    )
    parser.add_argument(
        "--log-level", choices=logs.LEVELS, default=log_level, help=f"(default {log_level})"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gpupool", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    daemon = commands.add_parser("daemon", help="serve this host's GPUs (or emulated ones)")
    daemon.add_argument(
        "--listen", default="127.0.0.1:7001", metavar="HOST:PORT", help="(default 127.0.0.1:7001)"
    )
    _add_daemon_options(daemon, log_level="info")

    run = commands.add_parser(
        "run",
        help="run a command on remote GPUs",
        description="Run COMMAND with GPUPOOL_DAEMONS set. Without --daemons (and without"
        " GPUPOOL_DAEMONS) an embedded daemon on loopback serves it: the GPUs of this host,"
        " or emulated ones.",
    )
    run.add_argument("--daemons", metavar="HOST:PORT[,...]", help="daemons to use, in order")
    _add_daemon_options(run, log_level="warning")  # the command's output is what matters
    run.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- COMMAND ...")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.configure(args.log_level)
    if args.command == "daemon":
        return _daemon(args)
    return _run(args)


def _start(args: argparse.Namespace, listen: str) -> Daemon:
    from gpupool.server.daemon import start_daemon

    return start_daemon(
        listen=listen,
        backend=args.backend,
        emu_devices=args.emu_devices,
        emu_memory=args.emu_memory,
        warm=args.warm,
        log_level=args.log_level,
    )


def _daemon(args: argparse.Namespace) -> int:
    daemon = _start(args, args.listen)
    print(
        f"gpupool daemon on {daemon.address} ({daemon.backend}"
        + (
            f", {args.emu_devices} x {format_size(args.emu_memory)}"
            if daemon.backend == "emu"
            else ""
        )
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


def _run(args: argparse.Namespace) -> int:
    command = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not command:
        print("gpupool run: no command given (gpupool run -- python prog.py)", file=sys.stderr)
        return 2
    env = dict(os.environ)
    daemons = args.daemons or env.get(ENV_DAEMONS)
    embedded = None
    if not daemons:
        embedded = _start(args, "127.0.0.1:0")
        daemons = embedded.address
    env[ENV_DAEMONS] = daemons
    try:
        return subprocess.call(command, env=env)
    except KeyboardInterrupt:
        return 130
    finally:
        if embedded is not None:
            embedded.stop()


if __name__ == "__main__":
    sys.exit(main())
