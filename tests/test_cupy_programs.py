"""Unmodified CuPy programs (examples/cupy/) run through ``gpupool run``.

On the emulator each program checks its results against NumPy itself. On a GPU the same
programs also run under real CuPy, and both runs must print the same lines.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpupool.server.daemon import Daemon, start_daemon
from tests.conftest import EXAMPLES, GPUPOOL

PROGRAMS = sorted(
    path for path in (EXAMPLES / "cupy").glob("*.py") if path.name != "matmul_loop.py"
)


@pytest.fixture(scope="module")
def emulated() -> Iterator[Daemon]:
    daemon = start_daemon(backend="emu", emu_devices=2, emu_memory=1 << 30)
    yield daemon
    daemon.stop()


def run_program(program: Path, daemons: str | None) -> subprocess.CompletedProcess[str]:
    """``python PROGRAM``, through ``gpupool run`` when ``daemons`` is given, else plain."""
    shim = [*GPUPOOL, "run", "--daemons", daemons, "--"]
    return subprocess.run(
        [*(shim if daemons else []), sys.executable, str(program)],
        capture_output=True,
        text=True,
        timeout=300,
        env={k: v for k, v in os.environ.items() if k != "GPUPOOL_DAEMONS"},
    )


@pytest.mark.parametrize("program", PROGRAMS, ids=lambda path: path.stem)
def test_program_runs_unmodified_on_the_emulator(program: Path, emulated: Daemon) -> None:
    result = run_program(program, emulated.address)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1] == "ok"


@pytest.mark.gpu
@pytest.mark.parametrize("program", PROGRAMS, ids=lambda path: path.stem)
def test_program_prints_the_same_under_real_cupy_and_the_shim(program: Path) -> None:
    cupy = pytest.importorskip("cupy")
    if cupy.cuda.runtime.getDeviceCount() < 1:
        pytest.skip("no GPU")
    native = run_program(program, None)
    if native.returncode != 0 and "two devices" in native.stderr:
        pytest.skip("needs two GPUs")
    assert native.returncode == 0, native.stderr
    daemon = start_daemon(backend="cupy")
    try:
        remote = run_program(program, daemon.address)
    finally:
        daemon.stop()
    assert remote.returncode == 0, remote.stderr
    assert remote.stdout == native.stdout
