"""The ``gpupool`` command as a user runs it: a daemon process, and ``gpupool run``."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import pytest

from gpupool import cli, logs
from gpupool.server.daemon import Daemon
from gpupool.units import format_size, parse_size
from tests.conftest import EXAMPLES, GPUPOOL, run_client


def test_sizes_read_as_people_write_them() -> None:
    assert parse_size("8GiB") == 8 << 30
    assert parse_size("512MiB") == 512 << 20
    assert parse_size("4096") == 4096
    assert parse_size("1.5GB") == 1_500_000_000
    assert format_size(8 << 30) == "8GiB"
    with pytest.raises(ValueError, match="not a size"):
        parse_size("lots")


def test_daemon_command_serves_the_issue_program() -> None:
    daemon = subprocess.Popen(
        [
            *GPUPOOL,
            "daemon",
            "--listen",
            "127.0.0.1:0",
            "--backend",
            "emu",
            "--emu-devices",
            "1",
            "--emu-memory",
            "1GiB",
            "--log-level",
            "warning",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert daemon.stdout is not None
        banner = daemon.stdout.readline()
        match = re.search(r"on (127\.0\.0\.1:\d+) \(emu, 1 x 1GiB\)", banner)
        assert match, banner
        result = run_client((EXAMPLES / "saxpy.py").read_text(), match.group(1))
        assert result.returncode == 0, result.stderr
        assert "1048576 elements OK" in result.stdout
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.communicate(timeout=30)
    assert daemon.returncode == 0


def test_run_starts_an_embedded_daemon_when_none_is_named() -> None:
    env = {k: v for k, v in os.environ.items() if k != "GPUPOOL_DAEMONS"}
    result = subprocess.run(
        [
            *GPUPOOL,
            "run",
            "--backend",
            "emu",
            "--log-level",
            "warning",
            "--",
            sys.executable,
            str(EXAMPLES / "saxpy.py"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "saxpy on gpupool CPU emulator" in result.stdout


def test_readmes_main_job_trains_on_two_gpus_of_an_embedded_pool() -> None:
    """``gpupool run -n 2 -- python examples/train.py``, the README's first command."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUPOOL_")}
    result = subprocess.run(
        [
            *GPUPOOL,
            "run",
            "-n",
            "2",
            "--backend",
            "emu",
            "--",
            sys.executable,
            str(EXAMPLES / "train.py"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1].endswith("with 2 device(s)")


def test_run_passes_the_exit_status_on(daemon: Daemon) -> None:
    check = (
        f"import os, sys; sys.exit(0 if os.environ['GPUPOOL_DAEMONS'] == {daemon.address!r} else 9)"
    )
    result = subprocess.run(
        [*GPUPOOL, "run", "--daemons", daemon.address, "--", sys.executable, "-c", check],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_bad_sizes_on_the_command_line_are_named() -> None:
    result = subprocess.run(
        [*GPUPOOL, "daemon", "--emu-memory", "lots"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "not a size: 'lots'" in result.stderr


def test_daemon_help_says_how_it_joins_a_pool(capsys: pytest.CaptureFixture[str]) -> None:
    """Only --scheduler makes a pooled daemon: its help does not promise $GPUPOOL_SCHEDULER."""
    with pytest.raises(SystemExit):
        cli.main(["daemon", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--scheduler HOST:PORT register with this pool scheduler" in text
    assert "GPUPOOL_SCHEDULER" not in text


@pytest.mark.parametrize("beats", [["--heartbeat", "10"], ["--heartbeat", "0"]])
def test_scheduler_refuses_heartbeats_that_would_mark_live_nodes_down(
    beats: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logs, "configure", lambda level: None)  # leave this process's logging
    assert cli.main(["scheduler", "--node-timeout", "5", *beats]) == 2
    assert "must be more than 0 and less than --node-timeout (5 s)" in capsys.readouterr().err
