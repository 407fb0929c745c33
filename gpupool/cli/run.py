"""``gpupool run``: run a command on remote GPUs, or on an embedded local daemon."""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
from typing import Any

from gpupool.cli.allocation import (
    add_allocation_options,
    held,
    local_pool,
    scheduler_named,
    wants_allocation,
)
from gpupool.cli.options import add_daemon_options, start_daemon
from gpupool.client import import_hook
from gpupool.client.context import ENV_DAEMONS
from gpupool.client.lease import ENV_ALLOCATION, ENV_TOKEN
from gpupool.errors import GpupoolError

NAME = "run"
ENV_TORCH = "GPUPOOL_TORCH"  # "cuda": the bootstrap reads torch's cuda as gpupool


def add(commands: Any) -> None:
    parser = commands.add_parser(
        NAME,
        help="run a command on remote GPUs",
        description="Run COMMAND with GPUPOOL_DAEMONS set. Without --daemons (and without"
        " GPUPOOL_DAEMONS or GPUPOOL_ALLOCATION) an embedded daemon on loopback serves it:"
        " the GPUs of this host, or emulated ones. With -n/--fraction/--memory/--scheduler,"
        " GPUs are allocated from the pool for the command and released when it ends, however"
        " it ends; with no scheduler named, from an embedded one whose daemon serves this host.",
    )
    parser.add_argument("--daemons", metavar="HOST:PORT[,...]", help="daemons to use, in order")
    parser.add_argument(
        "--torch",
        action="store_true",
        help="run a PyTorch program written for CUDA on the pool's devices: 'cuda' is read as"
        " 'gpupool' (docs/torch.md)",
    )
    add_daemon_options(parser, log_level="warning")  # the command's output is what matters
    add_allocation_options(parser.add_argument_group("GPUs from the pool"), 60.0, None)
    parser.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- COMMAND ...")


def main(args: argparse.Namespace) -> int:
    command = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not command:
        print("gpupool run: no command given (gpupool run -- python prog.py)", file=sys.stderr)
        return 2
    env = dict(os.environ)
    if args.torch:
        env[ENV_TORCH] = "cuda"
    if wants_allocation(args) and args.daemons:
        print(
            "gpupool run: --daemons names the daemons to use, -n/--fraction/--memory/--scheduler"
            " allocate GPUs from the pool: give one or the other",
            file=sys.stderr,
        )
        return 2
    if wants_allocation(args):  # GPUs from the pool, released however the command ends
        try:
            with contextlib.ExitStack() as stack:
                if not scheduler_named(args):
                    args.scheduler = stack.enter_context(local_pool(args))
                    env.pop(ENV_TOKEN, None)  # the embedded pool is open (see local_pool)
                lease = stack.enter_context(held(args))
                env.pop(ENV_DAEMONS, None)
                env[ENV_ALLOCATION] = lease.env_value
                return _call(command, env)
        except GpupoolError as exc:
            print(f"gpupool run: {exc}", file=sys.stderr)
            return 1
    if args.daemons:  # named daemons win over an allocation in the environment
        env.pop(ENV_ALLOCATION, None)
    daemons = args.daemons or env.get(ENV_DAEMONS)
    embedded = None
    if not daemons and not env.get(ENV_ALLOCATION):  # else the allocation's GPUs serve it
        embedded = start_daemon(args, "127.0.0.1:0")
        daemons = embedded.address
    if daemons:
        env[ENV_DAEMONS] = daemons
    try:
        return _call(command, env)
    finally:
        if embedded is not None:
            embedded.stop()


def _call(command: list[str], env: dict[str, str]) -> int:
    """The command's exit status (130 when interrupted).

    The command runs with the client shim: its ``import cupy`` (its subprocesses' too) loads
    ``gpupool.cupy``, whether its GPUs come from named daemons or from the pool.
    """
    try:
        return subprocess.call(command, env=import_hook.environment(env))
    except KeyboardInterrupt:
        return 130
