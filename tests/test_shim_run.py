"""``gpupool run`` runs an unmodified CuPy program: its ``import cupy`` loads gpupool.cupy."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from gpupool.server.daemon import Daemon
from tests.conftest import GPUPOOL

# A CuPy program as people write it: nothing in it knows about gpupool.
PROGRAM = r'''
import subprocess
import sys

import cupy
import cupy.cuda.runtime
import numpy as np
from cupy import cuda

x = cupy.array(np.linspace(0, 1, 3000).reshape(30, 100).astype(np.float32))
poly = cupy.ElementwiseKernel(
    "T x, T c", "T y", "y = horner(x, c)", "poly",
    preamble="template <typename V> __device__ V horner(V x, V c) { return (x + c) * x; }",
)
norm = cupy.ReductionKernel("T x", "T y", "x * x", "a + b", "y = sqrt(a)", "0", "rownorm")
block_max = cupy.RawKernel(r"""
extern "C" __global__ void block_max(const float* x, float* out, int n) {
    __shared__ float best[128];
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    best[threadIdx.x] = i < n ? x[i] : -1.0f;
    __syncthreads();
    for (int s = 64; s > 0; s >>= 1) {
        if (threadIdx.x < s) best[threadIdx.x] = fmaxf(best[threadIdx.x], best[threadIdx.x + s]);
        __syncthreads();
    }
    if (threadIdx.x == 0) out[blockIdx.x] = best[0];
}""", "block_max")

stream = cuda.Stream()
with stream:
    start = stream.record()
    y = poly(x, np.float32(0.5))
    rows = norm(y, axis=1)
    maxima = cupy.empty(24, np.float32)
    block_max((24,), (128,), (y, maxima, np.int32(y.size)))
    end = stream.record()
end.synchronize()
assert cuda.get_elapsed_time(start, end) >= 0
last = cupy.cuda.runtime.getDeviceCount() - 1  # 1 on the emulator, 0 on a one-GPU host
with cuda.Device(last):
    assert cupy.cuda.runtime.getDevice() == last
pool = cupy.get_default_memory_pool()
print("rows", " ".join(f"{v:.6f}" for v in rows.get()))
print("max", f"{maxima.get().max():.6f}")
print("pool", pool.used_bytes() > 0)
child = subprocess.run([sys.executable, "-c", "import cupy; print(cupy.__name__)"],
                       capture_output=True, text=True, check=True)
print("child", child.stdout.strip())
'''


def _run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*GPUPOOL, "run", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_an_unmodified_cupy_program_runs_through_gpupool_run(
    daemon: Daemon, tmp_path: Path
) -> None:
    (tmp_path / "prog.py").write_text(PROGRAM)
    # A sitecustomize already on the path still runs (the bootstrap chains to it).
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import os\nos.environ['SITE_RAN'] = 'yes'\n")
    (tmp_path / "check_site.py").write_text("import os\nprint(os.environ.get('SITE_RAN'))\n")
    path = os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, PYTHONPATH=path)
    env.pop("GPUPOOL_DAEMONS", None)
    result = _run(["--daemons", daemon.address, "--", sys.executable, "prog.py"], env, tmp_path)
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    x = np.linspace(0, 1, 3000).reshape(30, 100).astype(np.float32)
    y = (x + np.float32(0.5)) * x
    expected_rows = np.sqrt((y.astype(np.float64) ** 2).sum(axis=1))
    np.testing.assert_allclose([float(v) for v in lines["rows"].split()], expected_rows, rtol=1e-5)
    assert float(lines["max"]) == pytest.approx(float(y.max()), rel=1e-6)
    assert lines["pool"] == "True"
    assert lines["child"] == "gpupool.cupy"  # subprocesses of the command get the shim too
    chained = _run(
        ["--daemons", daemon.address, "--", sys.executable, "check_site.py"], env, tmp_path
    )
    assert chained.stdout.strip() == "yes", chained.stderr


def test_a_missing_cupy_submodule_names_the_shim(daemon: Daemon, tmp_path: Path) -> None:
    code = textwrap.dedent(
        """
        import cupy, cupyx
        try:
            import cupy.no_such_module
        except ModuleNotFoundError as exc:
            print(exc)
        try:
            cupyx.scatter_add
        except NotImplementedError as exc:
            print(exc)
        try:
            import cupyx.scipy.special
        except NotImplementedError as exc:
            print(exc)
        try:
            from cupyx.profiler import benchmark
        except NotImplementedError as exc:
            print(exc)
        """
    )
    result = _run(
        ["--daemons", daemon.address, "--", sys.executable, "-c", code], dict(os.environ), tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert "gpupool's CuPy shim has no gpupool.cupy.no_such_module" in result.stdout
    assert "cupyx.scatter_add is not supported" in result.stdout
    assert "cupyx.scipy is not supported" in result.stdout  # not "'cupyx' is not a package"
    assert "cupyx.profiler is not supported" in result.stdout
