"""``gpupool run``: run a command on remote GPUs, or on an embedded local daemon.

The command is a child process that ``gpupool run`` waits for, forwarding the signals a
service manager or a user sends (SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2) and returning
its exit status (128 + N when a signal N ended it; 127 when the command does not exist, 126
when it cannot be run). SIGINT is not forwarded: Ctrl-C reaches the child from the terminal
itself, as it reaches every process of a shell's foreground job, and ``gpupool run`` waits
for the child's KeyboardInterrupt handler to finish. The GPUs (an allocation, an embedded
daemon) are given back only once the child has ended.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

from gpupool.cli.allocation import (
    add_allocation_options,
    held,
    local_pool,
    scheduler_named,
    wants_allocation,
)
from gpupool.cli.options import add_daemon_options, addresses, start_daemon
from gpupool.client import import_hook
from gpupool.client.context import ENV_DAEMONS, probe
from gpupool.client.lease import ENV_ALLOCATION, ENV_TOKEN
from gpupool.errors import AllocationError, GpupoolError

NAME = "run"
FORWARDED = (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
NOT_FOUND, NOT_EXECUTABLE = 127, 126  # as shells say
ENV_TORCH = "GPUPOOL_TORCH"  # "cuda": the bootstrap reads torch's cuda as gpupool


def add(commands: Any) -> None:
    parser = commands.add_parser(
        NAME,
        help="run a command on remote GPUs",
        description="Run COMMAND with GPUPOOL_DAEMONS set. Without --daemons (and without"
        " GPUPOOL_DAEMONS or GPUPOOL_ALLOCATION) an embedded daemon on loopback serves it:"
        " the GPUs of this host, or emulated ones. With -n/--fraction/--memory/--scheduler,"
        " GPUs are allocated from the pool for the command and released when it ends, however"
        " it ends; with no scheduler named, from an embedded one whose daemon serves this host."
        " Daemons that do not answer are reported before the command starts. The command's"
        " exit status is returned; SIGTERM and SIGHUP are passed on to it.",
    )
    parser.add_argument(
        "--daemons", type=addresses, metavar="HOST:PORT[,...]", help="daemons to use, in order"
    )
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
    try:
        if wants_allocation(args):  # GPUs from the pool, released however the command ends
            return _allocated(args, command, env)
        if args.daemons:  # named daemons win over an allocation in the environment
            env.pop(ENV_ALLOCATION, None)
        daemons = args.daemons or env.get(ENV_DAEMONS)
        with contextlib.ExitStack() as stack:
            if not daemons and not env.get(ENV_ALLOCATION):  # else the allocation's GPUs
                embedded = start_daemon(args, "127.0.0.1:0")
                stack.callback(embedded.stop)
                daemons = embedded.address
            if daemons:
                probe(daemons.split(","))
                env[ENV_DAEMONS] = daemons
            return _call(command, env)
    except GpupoolError as exc:
        print(f"gpupool run: {exc}", file=sys.stderr)
        return 1


def _allocated(args: argparse.Namespace, command: list[str], env: dict[str, str]) -> int:
    with contextlib.ExitStack() as stack:
        pool = None
        if not scheduler_named(args):
            pool = stack.enter_context(local_pool(args))
            args.scheduler = pool.address
            env.pop(ENV_TOKEN, None)  # the embedded pool is open (see local_pool)
        try:
            lease = stack.enter_context(held(args))
        except AllocationError as exc:
            raise (exc if pool is None else pool.explain(exc)) from None
        env.pop(ENV_DAEMONS, None)
        env[ENV_ALLOCATION] = lease.env_value
        return _call(command, env)


def _call(command: list[str], env: dict[str, str]) -> int:
    """The command's exit status.

    The command runs with the client shim: its ``import cupy`` (its subprocesses' too) loads
    ``gpupool.cupy``, whether its GPUs come from named daemons or from the pool.
    """
    with _signals_held() as forward:
        try:
            child = subprocess.Popen(command, env=import_hook.environment(env))
        except FileNotFoundError:
            print(f"gpupool run: {command[0]}: command not found", file=sys.stderr)
            return NOT_FOUND
        except PermissionError:
            print(f"gpupool run: {command[0]}: permission denied", file=sys.stderr)
            return NOT_EXECUTABLE
        forward.append(child)
        code = child.wait()
    return 128 - code if code < 0 else code


@contextlib.contextmanager
def _signals_held() -> Iterator[list[subprocess.Popen[bytes]]]:
    """While the block runs, SIGINT does nothing here (the terminal gives it to the child) and
    the forwarded signals go to the child appended to the yielded list, once there is one
    (before it, SIGTERM ends this process as a SystemExit, so what it holds is released).
    Handlers, not SIG_IGN: a child inherits ignored signals, but not handlers."""
    children: list[subprocess.Popen[bytes]] = []

    def forward(signum: int, frame: object) -> None:
        if children:
            children[0].send_signal(signum)
        elif signum == signal.SIGTERM:
            sys.exit(128 + signum)

    previous = {signum: signal.signal(signum, forward) for signum in FORWARDED}
    previous[signal.SIGINT] = signal.signal(signal.SIGINT, lambda *_: None)
    try:
        yield children
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
