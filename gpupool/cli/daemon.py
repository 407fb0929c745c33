"""``gpupool daemon``: serve this host's GPUs (or emulated ones) until stopped."""

from __future__ import annotations

import argparse
import signal
from pathlib import Path
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
    tls = parser.add_argument_group("TLS (gRPC only: tcp:// is then not offered)")
    tls.add_argument("--tls-cert", type=Path, metavar="PEM", help="the daemon's certificate")
    tls.add_argument("--tls-key", type=Path, metavar="PEM", help="its private key")
    tls.add_argument(
        "--tls-client-ca", type=Path, metavar="PEM", help="require client certificates of this CA"
    )


def main(args: argparse.Namespace) -> int:
    from gpupool.server.daemon import TLSFiles

    if (args.tls_cert is None) != (args.tls_key is None):
        print("gpupool daemon: --tls-cert and --tls-key go together", flush=True)
        return 2
    if args.tls_client_ca and not args.tls_cert:
        print("gpupool daemon: --tls-client-ca needs --tls-cert and --tls-key", flush=True)
        return 2
    tls = TLSFiles(args.tls_cert, args.tls_key, args.tls_client_ca) if args.tls_cert else None
    daemon = start_daemon(args, args.listen, tls)
    emulated = f", {args.emu_devices} x {format_size(args.emu_memory)}"
    print(
        f"gpupool daemon on {daemon.address} ({daemon.backend}"
        + (emulated if daemon.backend == "emu" else "")
        + ")",
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
