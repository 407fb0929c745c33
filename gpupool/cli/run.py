"""``gpupool run``: run a command on remote GPUs, or on an embedded local daemon."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from typing import Any

from gpupool.cli.options import add_daemon_options, start_daemon
from gpupool.client import import_hook
from gpupool.client.context import ENV_DAEMONS

NAME = "run"


def add(commands: Any) -> None:
    parser = commands.add_parser(
        NAME,
        help="run a command on remote GPUs",
        description="Run COMMAND with GPUPOOL_DAEMONS set. Without --daemons (and without"
        " GPUPOOL_DAEMONS) an embedded daemon on loopback serves it: the GPUs of this host,"
        " or emulated ones.",
    )
    parser.add_argument("--daemons", metavar="HOST:PORT[,...]", help="daemons to use, in order")
    add_daemon_options(parser, log_level="warning")  # the command's output is what matters
    parser.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- COMMAND ...")


def main(args: argparse.Namespace) -> int:
    command = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not command:
        print("gpupool run: no command given (gpupool run -- python prog.py)", file=sys.stderr)
        return 2
    env = dict(os.environ)
    daemons = args.daemons or env.get(ENV_DAEMONS)
    embedded = None
    if not daemons:
        embedded = start_daemon(args, "127.0.0.1:0")
        daemons = embedded.address
    env[ENV_DAEMONS] = daemons
    # The client shim: the command's `import cupy` (its subprocesses' too) loads gpupool.cupy.
    env = import_hook.environment(env)
    try:
        return subprocess.call(command, env=env)
    except KeyboardInterrupt:
        return 130
    finally:
        if embedded is not None:
            embedded.stop()
