"""The ``gpupool`` command. Each subcommand is a module of this package with ``add`` and ``main``.

``add(commands)`` declares the subcommand's parser on the ``add_subparsers`` object and
``main(args)`` runs it and returns the exit status.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from gpupool import logs
from gpupool.cli import (
    bench,
    daemon,
    pool_list,
    release,
    request,
    run,
    scheduler,
    smi,
    teams,
    tokens,
)

COMMANDS = {
    module.NAME: module
    for module in (daemon, run, scheduler, pool_list, smi, request, release, tokens, teams, bench)
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gpupool", description="GPU remoting and pooling.")
    commands = parser.add_subparsers(dest="command", required=True)
    for module in COMMANDS.values():
        module.add(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.configure(getattr(args, "log_level", "warning"))
    return COMMANDS[args.command].main(args)
