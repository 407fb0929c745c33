"""``gpupool run`` and the CLI's edges, as a user meets them: each case one clear line on
stderr and the right exit status, no traceback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from gpupool import cli
from gpupool.bench import runner
from gpupool.scheduler.service import Scheduler
from gpupool.server.daemon import Daemon, start_daemon
from tests.conftest import GPUPOOL
from tests.test_pool import pool, secret_env  # noqa: F401  (fixtures)


def gpupool(*args: str, timeout: float = 60, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*GPUPOOL, *args], capture_output=True, text=True, timeout=timeout, **kwargs
    )


def one_line(stderr: str) -> str:
    """The one line a refusal says (argparse's usage lines aside), with no traceback."""
    lines = [line for line in stderr.splitlines() if not line.startswith("usage:")]
    assert "Traceback" not in stderr, stderr
    assert len([line for line in lines if not line.startswith(" ")]) == 1, stderr
    return lines[-1]


def said(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """``gpupool ARGS`` run in this process (as the command's entry point runs it): its exit
    status and the one line it wrote on stderr."""
    try:
        code = cli.main(args)
    except SystemExit as exc:  # argparse's refusals
        code = int(exc.code or 0)
    return code, one_line(capsys.readouterr().err)


def test_the_exit_status_and_a_missing_command(
    daemon: Daemon, capsys: pytest.CaptureFixture[str]
) -> None:
    run = ["run", "--daemons", daemon.address, "--"]
    assert cli.main([*run, sys.executable, "-c", "exit(7)"]) == 7
    killed = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
    assert cli.main([*run, sys.executable, "-c", killed]) == 128 + signal.SIGKILL
    capsys.readouterr()
    code, line = said([*run, "nosuchcmd-h6", "x"], capsys)
    assert (code, line) == (127, "gpupool run: nosuchcmd-h6: command not found")


def test_unreachable_daemons_are_reported_before_the_command_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "ran"
    code, line = said(
        [
            "run",
            "--daemons",
            "127.0.0.1:1",
            "--",
            sys.executable,
            "-c",
            f"open({str(marker)!r}, 'w')",
        ],
        capsys,
    )
    assert (code, line) == (1, "gpupool run: cannot reach daemon 127.0.0.1:1: connection refused")
    assert not marker.exists()


@pytest.mark.parametrize(
    ("args", "told"),
    [
        (["run", "-n", "1", "--ttl", "0", "--", "true"], "not a positive number of seconds: '0'"),
        (["daemon", "--listen", "127.0.0.1:99999"], "from 0 to 65535, not '127.0.0.1:99999'"),
        (["daemon", "--listen", "nonsense"], "a port from 0 to 65535, not 'nonsense'"),
        (["scheduler", "--listen", "host :7000"], "HOST:PORT to listen on, not 'host :7000'"),
        (["run", "--daemons", "a:1,b", "--", "true"], "not 'b'"),
        (["list", "--scheduler", "sched"], "not 'sched'"),
    ],
)
def test_numbers_and_addresses_are_checked_by_argparse(
    args: list[str], told: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, line = said(args, capsys)
    assert code == 2
    assert told in line


def test_every_subcommand_has_help_text(capsys: pytest.CaptureFixture[str]) -> None:
    for name in cli.COMMANDS:
        with pytest.raises(SystemExit):
            cli.main([name, "--help"])
        text = capsys.readouterr().out
        description = text.split("\n\n")[1]  # after the usage: what the command does
        assert not description.lstrip().startswith(("positional", "options")), (name, text)
        assert len(description.split()) >= 6, (name, description)


PROGRAM = """
import signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: (print("terminated", flush=True), sys.exit(3)))
try:
    print("ready", flush=True)
    time.sleep(60)
except KeyboardInterrupt:
    time.sleep(1.0)  # a handler that takes its time: gpupool run waits for it
    print("cleaned up", flush=True)
    sys.exit(5)
"""


@pytest.mark.parametrize(
    ("how", "code", "said"), [("term", 3, "terminated"), ("int", 5, "cleaned up")]
)
def test_signals_reach_the_command_and_its_status_comes_back(
    daemon: Daemon, how: str, code: int, said: str
) -> None:
    """SIGTERM to `gpupool run` alone is forwarded (the program is not orphaned); Ctrl-C (a
    SIGINT to the whole foreground group, as a terminal sends it) lets the program's handler
    finish, and its status is what `gpupool run` returns."""
    run = subprocess.Popen(
        [*GPUPOOL, "run", "--daemons", daemon.address, "--", sys.executable, "-c", PROGRAM],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert run.stdout is not None
        assert run.stdout.readline() == "ready\n"
        if how == "term":
            run.send_signal(signal.SIGTERM)
        else:
            os.killpg(run.pid, signal.SIGINT)
        out, err = run.communicate(timeout=30)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
    assert run.returncode == code, err
    assert out.strip() == said
    with pytest.raises(ProcessLookupError):  # nothing of the group is left running
        os.killpg(run.pid, 0)


def test_tables_keep_whole_addresses_when_piped(pool: Scheduler) -> None:  # noqa: F811
    smi = gpupool("smi", "--scheduler", pool.address)
    assert smi.returncode == 0, smi.stderr
    rows = [line for line in smi.stdout.splitlines() if "127.0.0.1:" in line]
    assert rows and all("(127.0.0.1:" in row and ")" in row for row in rows), smi.stdout
    assert max(len(line) for line in smi.stdout.splitlines()) > 80


def test_the_embedded_pool_says_how_to_make_it_larger() -> None:
    env = {k: v for k, v in os.environ.items() if k != "GPUPOOL_SCHEDULER"}
    result = gpupool(
        "run", "-n", "3", "--backend", "emu", "--emu-devices", "1", "--", "true", env=env
    )
    assert result.returncode == 1
    line = one_line(result.stderr)
    assert "can never fit" in line
    assert "the embedded pool is this host with 1 emulated GPUs of 8GiB" in line
    assert "--emu-devices N and --emu-memory SIZE make it larger" in line


def test_bench_fits_its_buffers_to_the_device(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = gpupool(
        "bench", "bandwidth", "--backend", "emu", "--emu-memory", "64MiB",
        "--sizes", "4KiB,32MiB", "--transport", "tcp", "--stripes", "1", "--json", str(out),
        timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    said = " ".join(result.stdout.split())
    assert "skipping 32MiB: the device has 64MiB free, and each size needs 2 buffers" in said
    document = json.loads(out.read_text())
    assert document["meta"]["skipped_sizes"] == [32 << 20]
    assert {record["size_bytes"] for record in document["records"]} == {4096}


def test_bench_keeps_what_it_measured_when_a_target_fails() -> None:
    """The daemon goes away after the first size: the figures of that size are kept."""
    daemon = start_daemon(backend="emu", emu_devices=1, emu_memory=1 << 30, log_level="error")
    plan = runner.Plan(["bandwidth"], [4 << 10, 64 << 10], ["tcp"], 1)

    def advance(what: str) -> None:
        if "64 KiB" in what:
            daemon.stop(0)

    try:
        outcome = runner.run(daemon.address, plan, lambda total: None, advance)
    finally:
        daemon.stop(0)
    assert outcome.failure is not None and "ConnectionLost" in outcome.failure
    measured = {(r.transport, r.size_bytes) for r in outcome.records}
    assert ("tcp", 4 << 10) in measured
    assert ("tcp", 64 << 10) not in measured
