"""``gpupool bench``: remote against native bandwidth, latency and launch rate, in one run."""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gpupool.cli.options import add_daemon_options, console, size
from gpupool.errors import GpupoolError
from gpupool.units import format_size

NAME = "bench"
VIRTUAL = ("peer", "collective")  # a virtual node's paths (gpupool/bench/virtual.py)
VIRTUAL_SIZES = [64 << 10, 1 << 20, 16 << 20, 64 << 20, 256 << 20]


def sizes(text: str) -> list[int]:
    """Comma-separated sizes: ``4KiB,1MiB,256MiB``."""
    return [size(part) for part in text.split(",") if part.strip()]


def stripes(text: str) -> int:
    """A number of tcp:// connections a daemon accepts for one session."""
    from gpupool.transport.payload import MAX_STRIPES

    if not text.isdigit() or not 1 <= int(text) <= MAX_STRIPES:
        raise argparse.ArgumentTypeError(f"a number of connections, 1 to {MAX_STRIPES}: {text!r}")
    return int(text)


def count(text: str) -> int:
    """A number of operations: a positive integer, at least a training step's."""
    from gpupool.bench.ops import MLP_OPS

    if not text.isdigit() or int(text) < MLP_OPS:
        raise argparse.ArgumentTypeError(f"a number of operations, {MLP_OPS} or more: {text!r}")
    return int(text)


def picture(text: str) -> Path:
    """A file matplotlib can draw into, known before the run rather than after it."""
    from matplotlib.backend_bases import FigureCanvasBase

    path = Path(text)
    formats = FigureCanvasBase.get_supported_filetypes()
    if path.suffix.lstrip(".").lower() not in formats:
        raise argparse.ArgumentTypeError(
            f"{text!r}: name a picture file ({', '.join(f'.{name}' for name in sorted(formats))})"
        )
    return path


def add(commands: Any) -> None:
    from gpupool.bench.ops import OPS
    from gpupool.bench.runner import KINDS

    parser = commands.add_parser(
        NAME,
        help="measure remote against native copies, round trips, launches and small operations",
        description="Measure, in one run and alternating, native copies (CuPy on a local GPU,"
        " else NumPy) and remote ones over each transport, plus the raw link; `ops`: loops of"
        " small array operations natively and through the CuPy shim, with the client's and"
        " the daemon's CPU time and the round trips per operation. Without"
        " --daemons an embedded local daemon serves (as `gpupool run` does).",
    )
    parser.add_argument(
        "what",
        choices=[*KINDS, "all", *VIRTUAL],
        help="what to measure (peer, collective: between the devices of several daemons)",
    )
    parser.add_argument(
        "--daemons",
        metavar="HOST:PORT[,...]",
        help="the daemon to measure (device 0); peer/collective use every one given",
    )
    parser.add_argument(
        "--transport",
        metavar="T[,T...]",
        help="transports to measure (default: every one the daemon offers and this client has)",
    )
    parser.add_argument(
        "--sizes",
        type=sizes,
        metavar="SIZE[,...]",
        help="copy sizes (default 4KiB..256MiB on an emulator, ..1GiB on a GPU)",
    )
    from gpupool.transport.links.frame_links import DEFAULT_STRIPES

    parser.add_argument(
        "--stripes",
        type=stripes,
        default=DEFAULT_STRIPES,
        metavar="N",
        help=f"tcp:// connections (default here {DEFAULT_STRIPES}: up to 4, one a core)",
    )
    parser.add_argument(
        "--nodes",
        type=int,
        default=2,
        metavar="N",
        help="peer/collective without --daemons: local daemon processes to start (default 2)",
    )
    parser.add_argument(
        "--ops",
        type=count,
        default=OPS,
        metavar="N",
        help=f"small operations a loop makes in one turn (`ops`; default {OPS})",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the records here")
    parser.add_argument("--plot", type=picture, metavar="FILE.png", help="draw bandwidth curves")
    add_daemon_options(parser, log_level="warning")


@contextmanager
def daemon_process(args: argparse.Namespace) -> Iterator[tuple[str, int]]:
    """A local daemon in a process of its own, as a real one runs: its front would otherwise
    share this process (and its GIL) with the client being measured. Yields its address and
    its process id (its CPU time, its workers' included, is read for small operations)."""
    command = [
        *(sys.executable, "-m", "gpupool.cli", "daemon", "--listen", "127.0.0.1:0"),
        *("--backend", args.backend, "--emu-devices", str(args.emu_devices)),
        *("--emu-memory", str(args.emu_memory), "--warm", str(args.warm)),
        *("--log-level", args.log_level),
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        banner = process.stdout.readline()
        found = re.search(r" on (\S+) \(", banner)
        if found is None:
            raise SystemExit(f"gpupool bench: the local daemon did not start ({banner!r})")
        yield found.group(1), process.pid
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def main(args: argparse.Namespace) -> int:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from gpupool.bench import report, runner
    from gpupool.client.context import Context
    from gpupool.proto import gpupool_pb2 as pb
    from gpupool.transport.links import OPENERS, candidates
    from gpupool.transport.links.frame_links import ENV_STRIPES

    out = console()
    if args.what in VIRTUAL:
        return _virtual(args, out)
    with ExitStack() as stack:
        daemon_pid = None
        if args.daemons:
            address = args.daemons.split(",")[0]
        else:
            address, daemon_pid = stack.enter_context(daemon_process(args))
        try:
            probe = Context([address])
        except GpupoolError as exc:
            print(f"gpupool bench: {exc}", file=sys.stderr)
            return 1
        endpoints = probe.daemons[address].endpoints
        backend_name = probe.device(0).properties.name if probe.devices else "?"
        on_gpu = probe.daemons[address].backend == "cupy"
        try:
            free = probe.session(0).call(pb.Request(mem_get_info=pb.MemGetInfo())).mem_info.free
        except GpupoolError as exc:
            print(f"gpupool bench: {exc}", file=sys.stderr)
            return 1
        finally:
            probe.close()
        offered = [urlsplit(url).scheme for url in candidates(endpoints)]
        wanted = args.transport.split(",") if args.transport else offered
        missing = [name for name in wanted if name not in offered or name not in OPENERS]
        if missing:
            out.print(f"[red]not available here: {', '.join(missing)}[/red] (have {offered})")
            return 2
        kinds = runner.KINDS if args.what == "all" else (args.what,)
        plan, skipped = runner.Plan(
            kinds=kinds,
            sizes=args.sizes or (runner.GPU_SIZES if on_gpu else runner.EMULATOR_SIZES),
            transports=wanted,
            stripes=args.stripes,
            ops=args.ops,
        ).fitting(free)
        if skipped:
            out.print(
                f"skipping {', '.join(format_size(s) for s in skipped)}: the device has"
                f" {format_size(free)} free, and each size needs {plan.device_buffers()}"
                " buffers on it at once (--sizes chooses others)"
            )
        os.environ[ENV_STRIPES] = str(args.stripes)
        with Progress(
            TextColumn("{task.description:<28}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=out,
        ) as progress:
            task = progress.add_task("starting targets", total=None)
            outcome = runner.run(
                address,
                plan,
                lambda total: progress.update(task, total=total),
                lambda what: progress.update(task, advance=1, description=what),
                daemon_pid,
            )
    records = outcome.records
    report.print_tables(records, out)
    meta = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "device": backend_name,
        "daemon": address if args.daemons else "embedded (a local daemon process)",
        "transports": list(wanted),
        "stripes": args.stripes,
        "skipped_sizes": skipped,
    }
    if outcome.failure is not None:
        meta["failure"] = outcome.failure
    if args.json:
        report.write_json(records, args.json, meta)
        out.print(f"records: {args.json}")
    if args.plot:
        report.plot(records, args.plot, f"gpupool bench — {backend_name}, {meta['date']}")
        out.print(f"plot: {args.plot}")
    if outcome.failure is not None:
        print(f"gpupool bench: stopped early: {outcome.failure}", file=sys.stderr)
        return 1
    return 0


def _virtual(args: argparse.Namespace, console: Any) -> int:
    """``peer`` or ``collective``: on the daemons named, else on local daemon processes."""
    from rich.progress import BarColumn, Progress, TextColumn

    from gpupool.bench import virtual
    from gpupool.transport.links.frame_links import ENV_STRIPES

    os.environ[ENV_STRIPES] = str(args.stripes)
    with ExitStack() as stack:
        if args.daemons:
            addresses = [part.strip() for part in args.daemons.split(",") if part.strip()]
        else:
            started = [stack.enter_context(daemon_process(args)) for _ in range(args.nodes)]
            addresses = [address for address, _pid in started]
        sizes = args.sizes or VIRTUAL_SIZES
        with Progress(TextColumn("{task.description:<28}"), BarColumn(), console=console) as bar:
            task = bar.add_task("starting", total=None)

            def advance(what: str) -> None:
                bar.update(task, description=what)

            try:
                if args.what == "peer":
                    records = virtual.peer(addresses, sizes, args.stripes, advance)
                else:
                    records = virtual.collective(addresses, sizes, advance)
            except GpupoolError as exc:
                print(f"gpupool bench: {exc}", file=sys.stderr)
                return 1
    where = ", ".join(addresses) if args.daemons else f"{len(addresses)} local daemon processes"
    from gpupool.bench import report

    report.print_tables(records, console)
    meta = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "device": f"{args.what} ({args.backend})",
        "daemon": where,
        "stripes": args.stripes,
    }
    if args.json:
        report.write_json(records, args.json, meta)
        console.print(f"records: {args.json}")
    if args.plot:
        report.plot(records, args.plot, f"gpupool bench {args.what}, {meta['date']}")
        console.print(f"plot: {args.plot}")
    return 0
