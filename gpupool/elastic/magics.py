"""``%load_ext gpupool``: the ``%gpupool`` line magic of IPython and Jupyter.

``%gpupool attach -n 2 --fraction 0.5`` (the options of ``gpupool run``'s pool group),
``%gpupool detach [ORDINAL ...]``, ``%gpupool devices`` and ``%gpupool smi``: the calls of
``gpupool.elastic`` with the CLI's option types, so a cell and a shell take the same words.
A mistake or a refusal is one line (IPython's UsageError), not a traceback.
"""

from __future__ import annotations

import argparse
import shlex
from typing import Any, NoReturn

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class

from gpupool import elastic
from gpupool.cli import smi
from gpupool.cli.options import address, addresses, count, fraction, positive_seconds, seconds, size
from gpupool.errors import GpupoolError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"%gpupool: {message}")

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if message:
            print(message)
        raise UsageError("%gpupool: see the usage above") if status else _Done()


class _Done(UsageError):
    """``--help`` was shown: nothing else to do."""


def parser() -> argparse.ArgumentParser:
    top = _Parser(prog="%gpupool", description="GPUs of the pool in this notebook.")
    commands = top.add_subparsers(dest="command", required=True, parser_class=_Parser)
    attach = commands.add_parser("attach", help="attach GPUs (appended to the devices)")
    attach.add_argument("-n", dest="count", type=count, default=1, metavar="N")
    share = attach.add_mutually_exclusive_group()
    share.add_argument("--fraction", type=fraction, metavar="F")
    share.add_argument("--memory", type=size, metavar="SIZE")
    attach.add_argument("--policy", choices=("pack", "spread"), default=None)
    attach.add_argument("--same-node", action="store_true")
    attach.add_argument("--ttl", type=positive_seconds, default=None, metavar="S")
    attach.add_argument("--wait", type=seconds, default=None, metavar="S")
    attach.add_argument("--scheduler", type=address, metavar="HOST:PORT")
    attach.add_argument("--daemons", type=addresses, metavar="HOST:PORT[,...]")
    detach = commands.add_parser("detach", help="detach devices (all by default)")
    detach.add_argument("ordinals", type=int, nargs="*", metavar="ORDINAL")
    commands.add_parser("devices", help="what is attached")
    pool = commands.add_parser("smi", help="the pool's GPUs, sessions and leases")
    pool.add_argument("--scheduler", type=address, metavar="HOST:PORT")
    return top


@magics_class
class GpupoolMagics(Magics):
    @line_magic
    def gpupool(self, line: str) -> None:
        """%gpupool attach|detach|devices|smi ... (``%gpupool --help``)."""
        try:
            args = parser().parse_args(shlex.split(line))
        except _Done:
            return
        try:
            run_command(args)
        except GpupoolError as exc:  # a refusal (no room, no scheduler): its one line
            raise UsageError(f"%gpupool {args.command}: {exc}") from None


def run_command(args: argparse.Namespace) -> None:
    """Carry out one parsed ``%gpupool`` command, saying what it did."""
    if args.command == "attach":
        attached = elastic.attach(
            args.count,
            fraction=args.fraction,
            memory=args.memory,
            policy=args.policy,
            same_node=args.same_node,
            ttl=args.ttl,
            wait=args.wait,
            scheduler=args.scheduler,
            daemons=args.daemons,
        )
        rows = [row for row in elastic.devices() if row.ordinal in attached]
        print("\n".join(elastic.describe(rows)))
    elif args.command == "detach":
        detached = elastic.detach(args.ordinals or None)
        print(f"detached {detached}" if detached else "nothing was attached")
    elif args.command == "devices":
        print("\n".join(elastic.describe(elastic.devices())))
    else:
        scheduler = args.scheduler or elastic.pool_address()
        smi.main(argparse.Namespace(scheduler=scheduler))


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext gpupool``."""
    ipython.register_magics(GpupoolMagics)
