"""Argument types and option groups shared by several subcommands."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from gpupool import logs
from gpupool.addresses import split_host_port
from gpupool.units import parse_size

if TYPE_CHECKING:
    from rich.console import Console

    from gpupool.server.daemon import Daemon, PoolMembership
    from gpupool.tls import TLSFiles

PIPED_WIDTH = 1000  # columns of a table written to a pipe or file: no address is ever cut


def size(text: str) -> int:
    """A positive size as people write it (``8GiB``, ``512MiB``, ``4096``)."""
    try:
        value = parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    if value <= 0:
        raise argparse.ArgumentTypeError(f"a device needs memory, not {text!r}")
    return value


def count(text: str) -> int:
    """A positive whole number."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"not a positive count: {text!r}")
    return int(text)


def add_daemon_options(parser: argparse.ArgumentParser, log_level: str) -> None:
    """What a daemon (a standalone one, or ``run``'s embedded one) is made of."""
    from gpupool.server.backends import BACKENDS

    parser.add_argument(
        "--backend", choices=BACKENDS, default="auto", help="auto: CuPy on a GPU, else emulator"
    )
    parser.add_argument(
        "--emu-devices", type=count, default=2, metavar="N", help="emulated devices (default 2)"
    )
    parser.add_argument(
        "--emu-memory",
        type=size,
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
    limits = parser.add_argument_group("limits of a session's work (docs/limits.md)")
    limits.add_argument(
        "--kernel-time-limit",
        type=positive_seconds,
        metavar="S",
        help="longest one call may run a kernel, then cudaErrorLaunchTimeout"
        " (default $GPUPOOL_KERNEL_TIME_LIMIT, else 600)",
    )
    limits.add_argument(
        "--compile-time-limit",
        type=positive_seconds,
        metavar="S",
        help="longest a module may compile, then CompileError"
        " (default $GPUPOOL_COMPILE_TIME_LIMIT, else 120)",
    )
    add_log_level(parser, log_level)


def add_log_level(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument(
        "--log-level", choices=logs.LEVELS, default=default, help=f"(default {default})"
    )


def start_daemon(
    args: argparse.Namespace,
    listen: str,
    pool: PoolMembership | None = None,
    tls: TLSFiles | None = None,
    trusted_emulator: bool = False,
) -> Daemon:
    """Start a daemon from the options of ``add_daemon_options``, in ``pool`` if given."""
    from gpupool.server.daemon import start_daemon as start
    from gpupool.server.lifecycle import Limits

    limits = Limits.from_env(kernel_s=args.kernel_time_limit, compile_s=args.compile_time_limit)
    return start(
        listen=listen,
        backend=args.backend,
        emu_devices=args.emu_devices,
        emu_memory=args.emu_memory,
        warm=args.warm,
        log_level=args.log_level,
        membership=pool,
        tls=tls,
        trusted_emulator=trusted_emulator,
        limits=limits,
    )


def fraction(text: str) -> float:
    """A share of a GPU, as the scheduler takes one: from 1% to all of it."""
    from gpupool.scheduler.limits import MIN_FRACTION

    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not MIN_FRACTION <= value <= 1:
        raise argparse.ArgumentTypeError(
            f"a fraction of a GPU is in [{MIN_FRACTION:g}, 1], not {text!r}"
        )
    return value


def factor(text: str) -> float:
    """An oversubscription factor: a finite number, at least 1."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 1 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"a factor is a number of at least 1, not {text!r}")
    return value


def _port(text: str, address: str, lowest: int) -> int:
    if not text.isdigit() or not lowest <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(
            f"HOST:PORT with a port from {lowest} to 65535, not {address!r}"
        )
    return int(text)


def listen_address(text: str) -> str:
    """Where to listen: ``HOST:PORT`` (port 0 picks a free one; ``[::1]:7001`` for IPv6)."""
    host, port = split_host_port(text)
    _port(port, text, 0)
    if not text.rpartition(":")[0] or any(c.isspace() for c in host):
        raise argparse.ArgumentTypeError(f"HOST:PORT to listen on, not {text!r}")
    return text


def address(text: str) -> str:
    """A daemon's or scheduler's ``HOST:PORT``."""
    host, port = split_host_port(text)
    _port(port, text, 1)
    if not host or any(c.isspace() for c in host):
        raise argparse.ArgumentTypeError(f"HOST:PORT, not {text!r}")
    return text


def addresses(text: str) -> str:
    """Comma-separated ``HOST:PORT``s, each checked; kept as given."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not parts:
        raise argparse.ArgumentTypeError("name at least one HOST:PORT")
    for part in parts:
        address(part)
    return ",".join(parts)


def console() -> Console:
    """A rich console whose tables keep every cell whole when written to a pipe or a file
    (rich would fit them into 80 columns, cutting addresses)."""
    import sys

    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else PIPED_WIDTH)


def seconds(text: str) -> float:
    """A duration in seconds, zero or more."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value < 0:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}")
    return value


def add_tls_options(parser: argparse.ArgumentParser, peers: str, title: str = "TLS") -> None:
    """``--tls-cert``/``--tls-key`` (serve gRPC over TLS) and ``--tls-client-ca`` (mTLS)."""
    group = parser.add_argument_group(title)
    group.add_argument("--tls-cert", type=Path, metavar="PEM", help="the server's certificate")
    group.add_argument("--tls-key", type=Path, metavar="PEM", help="its private key")
    group.add_argument(
        "--tls-client-ca",
        type=Path,
        metavar="PEM",
        help=f"require {peers} to show certificates of this CA",
    )


def tls_files(args: argparse.Namespace, command: str) -> TLSFiles | int | None:
    """The TLS options' files (None: no TLS), or the exit status of options that do not go
    together (said on stderr)."""
    from gpupool.tls import TLSFiles

    if (args.tls_cert is None) != (args.tls_key is None):
        print(f"gpupool {command}: --tls-cert and --tls-key go together", file=sys.stderr)
        return 2
    if args.tls_client_ca and not args.tls_cert:
        print(f"gpupool {command}: --tls-client-ca needs --tls-cert and --tls-key", file=sys.stderr)
        return 2
    return TLSFiles(args.tls_cert, args.tls_key, args.tls_client_ca) if args.tls_cert else None


def add_db_option(parser: argparse.ArgumentParser) -> None:
    """The scheduler's state file: the scheduler's, and the admin commands' (tokens, teams)."""
    parser.add_argument(
        "--db",
        default="gpupool-scheduler.db",
        metavar="PATH",
        help="the scheduler's SQLite file of its state, made if missing"
        " (default gpupool-scheduler.db)",
    )


def positive_seconds(text: str) -> float:
    """A finite duration in seconds, more than zero."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"not a positive number of seconds: {text!r}")
    return value


def add_scheduler_option(parser: argparse._ActionsContainer) -> None:
    parser.add_argument(
        "--scheduler",
        type=address,
        metavar="HOST:PORT",
        help="the pool scheduler (default $GPUPOOL_SCHEDULER)",
    )
