"""Real daemons on loopback (port 0), one per backend, and clients connected to them.

Every behaviour test that takes ``daemon`` runs once on the CPU emulator and once on a GPU
(the ``gpu`` mark), which is skipped cleanly where CuPy sees no GPU. No CUDA context is made
in the test process: the daemon probes and runs the GPU in its worker processes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import gpupool
from gpupool.server.daemon import Daemon, start_daemon

EMU_MEMORY = 2 << 30


@pytest.fixture(scope="session", autouse=True)
def _kernel_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Compiled emulator kernels go to a folder of this test run (workers inherit it)."""
    os.environ["GPUPOOL_CACHE_DIR"] = str(tmp_path_factory.mktemp("kernel-cache"))


@pytest.fixture(scope="module", params=["emu", pytest.param("cupy", marks=pytest.mark.gpu)])
def daemon(request: pytest.FixtureRequest) -> Iterator[Daemon]:
    """A daemon of the parametrized backend, for the tests of one module."""
    try:
        started = start_daemon(backend=request.param, emu_devices=2, emu_memory=EMU_MEMORY)
    except RuntimeError as exc:
        pytest.skip(f"no {request.param} backend here: {exc}")
    yield started
    started.stop()


@pytest.fixture
def connected(daemon: Daemon) -> Iterator[Daemon]:
    """This process's client connected to ``daemon``; its sessions end after the test."""
    gpupool.connect(daemon.address)
    yield daemon
    gpupool.disconnect()


def run_client(code: str, daemons: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run a client program in its own process, as a user's program would run."""
    env = dict(os.environ, GPUPOOL_DAEMONS=daemons)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
