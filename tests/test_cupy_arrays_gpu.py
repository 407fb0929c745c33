"""The array path on a real GPU: remote against native CuPy (skipped without a GPU).

The test process makes no CUDA context (conftest): native CuPy runs in a subprocess.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator

import numpy as np
import pytest

import gpupool
import gpupool.cupy as cp
from gpupool import runtime as rt
from gpupool.server.daemon import Daemon, start_daemon

pytestmark = pytest.mark.gpu

N, REPEATS = 4096, 20

NATIVE_MATMUL = f"""
import time, cupy
a = cupy.random.rand({N}, {N}, dtype=cupy.float32)
b = cupy.random.rand({N}, {N}, dtype=cupy.float32)
for _ in range(3):
    c = a @ b
cupy.cuda.Device().synchronize()
start = time.perf_counter()
for _ in range({REPEATS}):
    c = a @ b
cupy.cuda.Device().synchronize()
print(time.perf_counter() - start)
"""


@pytest.fixture(scope="module")
def gpu_daemon() -> Iterator[Daemon]:
    try:
        daemon = start_daemon(backend="cupy")
    except RuntimeError as exc:
        pytest.skip(f"no GPU here: {exc}")
    gpupool.connect(daemon.address)
    yield daemon
    gpupool.disconnect()
    daemon.stop()


def test_a_matmul_loop_runs_within_1_2x_of_native(gpu_daemon: Daemon) -> None:
    native = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(NATIVE_MATMUL)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    native_s = float(native.stdout.strip().splitlines()[-1])
    a = cp.random.rand(N, N, dtype=np.float32)
    b = cp.random.rand(N, N, dtype=np.float32)
    for _ in range(3):
        c = a @ b
    rt.deviceSynchronize()
    start = time.perf_counter()
    for _ in range(REPEATS):
        c = a @ b
    rt.deviceSynchronize()
    remote_s = time.perf_counter() - start
    print(f"{REPEATS} x {N}^2 float32 matmul: remote {remote_s:.3f} s, native {native_s:.3f} s")
    assert remote_s <= 1.2 * native_s
    np.testing.assert_allclose(c[:2, :2].get(), a[:2].get() @ b.get()[:, :2], rtol=1e-3)
