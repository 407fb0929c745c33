"""Elastic GPUs in one live process: attach, compute, attach more, detach, attach again.

A scheduler and two emulated daemons on loopback (port 0), and this process's client, as a
notebook would use them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator

import numpy as np
import pytest

import gpupool
from gpupool import runtime as rt
from gpupool.client import context
from gpupool.client.lease import ENV_SCHEDULER, SchedulerClient, allocate
from gpupool.errors import AllocationError, CUDARuntimeError
from gpupool.scheduler.service import Scheduler
from gpupool.server.daemon import Daemon
from tests.test_pool import FAST, SECRET, join, secret_env  # noqa: F401

GiB = 1 << 30


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory, secret_env: None) -> Iterator[Scheduler]:  # noqa: F811
    """A scheduler with nodes a and b, two 4 GiB emulated devices each."""
    from gpupool.scheduler.service import start_scheduler

    db = tmp_path_factory.mktemp("pool") / "scheduler.db"
    scheduler = start_scheduler("127.0.0.1:0", str(db), SECRET, **FAST)
    daemons = [join(scheduler, "a", 2, 4 * GiB), join(scheduler, "b", 2, 4 * GiB)]
    yield scheduler
    for daemon in daemons:
        daemon.stop()
    scheduler.stop()


@pytest.fixture
def scheduler(pool: Scheduler, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv(ENV_SCHEDULER, pool.address)
    for name in ("GPUPOOL_DAEMONS", "GPUPOOL_ALLOCATION"):
        monkeypatch.delenv(name, raising=False)
    yield pool.address
    gpupool.detach()
    assert context.active() is None


def held(address: str) -> int:
    """Allocations the scheduler holds."""
    client = SchedulerClient(address)
    try:
        return len(client.pool().allocations)
    finally:
        client.close()


def test_attach_adds_devices_and_keeps_the_first_ones_arrays(scheduler: str) -> None:
    import gpupool.cupy as cp

    first = gpupool.attach(1)
    assert first == (0,)
    a = cp.arange(1000, dtype=cp.float32)
    halves = gpupool.attach(2, fraction=0.5)
    assert tuple(halves) == (1, 2)
    assert rt.getDeviceCount() == 3
    rows = gpupool.devices()
    assert [r.ordinal for r in rows] == [0, 1, 2]
    assert [r.share for r in rows] == [1.0, 0.5, 0.5]
    assert all(r.allocation and r.expires_at and r.expires_at > time.time() for r in rows)
    assert rows[1].allocation == rows[2].allocation != rows[0].allocation
    results = []
    for ordinal in halves:
        with cp.cuda.Device(ordinal):
            b = cp.asarray(a.get()) * 2  # through the host, onto this device
            results.append(float(b.sum()))
    assert results == [999000.0, 999000.0]
    assert float(a.sum()) == 499500.0  # the first lease's array, still intact
    assert held(scheduler) == 2

    assert gpupool.detach(first) == [0]
    assert held(scheduler) == 1  # released at once, not left to run out
    with pytest.raises(CUDARuntimeError, match=r"cudaErrorInvalidDevice: device 0 was detached"):
        rt.setDevice(0)
    with cp.cuda.Device(2):
        assert float(cp.ones(10).sum()) == 10.0  # the others keep their ordinals
    again = gpupool.attach(1)
    assert tuple(again) == (3,)  # appended: ordinal 0 never names another device
    assert rt.getDeviceCount() == 4
    with cp.cuda.Device(3):
        assert float(cp.full(4, 2.5).sum()) == 10.0

    assert sorted(gpupool.detach()) == [1, 2, 3]
    assert held(scheduler) == 0
    with gpupool.attach(1) as fresh:  # nothing was attached: numbering starts over
        assert fresh == (0,)
        assert float(cp.ones(3).sum()) == 3.0
    assert context.active() is None or not context.active().attached(0)  # type: ignore[union-attr]
    assert held(scheduler) == 0


def test_leases_and_plain_daemons_side_by_side(scheduler: str, daemon: Daemon) -> None:
    """Two leases the program holds itself, and a plain daemon, in one process."""
    address = daemon.address
    l1, l2 = allocate(scheduler, 1), allocate(scheduler, 1, fraction=0.5)
    try:
        gpupool.connect(lease=[l1, l2])
        assert rt.getDeviceCount() == 2
        plain = gpupool.attach(daemons=address)
        assert tuple(plain) == (2, 3)  # the conftest daemon's two devices
        names = [row.node for row in gpupool.devices()]
        assert set(names[:2]) <= {"a", "b"}
        assert names[2:] == [address, address]
        x = np.arange(16, dtype=np.float32)
        for ordinal in range(4):
            rt.setDevice(ordinal)
            dx = rt.malloc(x.nbytes)
            rt.memcpy(dx, x.ctypes.data, x.nbytes, rt.memcpyHostToDevice)
            out = np.empty_like(x)
            rt.memcpy(out.ctypes.data, dx, x.nbytes, rt.memcpyDeviceToHost)
            assert (out == x).all()
        l1.release()  # releasing a lease detaches its GPU
        assert [row.ordinal for row in gpupool.devices()] == [1, 2, 3]
        with pytest.raises(CUDARuntimeError, match="cudaErrorInvalidDevice"):
            rt.setDevice(0)
    finally:
        l1.release()
        l2.release()
    assert held(scheduler) == 0


def test_attach_refusals_are_typed_and_change_nothing(scheduler: str) -> None:
    kept = gpupool.attach(1)
    with pytest.raises(AllocationError, match="can never fit"):
        gpupool.attach(5)
    with pytest.raises(AllocationError, match="at least 1"):
        gpupool.attach(0)
    with pytest.raises(AllocationError, match="ttl"):
        gpupool.attach(1, ttl=0)
    assert [row.ordinal for row in gpupool.devices()] == list(kept)
    assert held(scheduler) == 1


def test_install_cupy_and_the_embedded_pool_in_process() -> None:
    """No scheduler named: attach starts the embedded pool, as `gpupool run -n` does; its
    refusal says how to make it larger; install_cupy makes `import cupy` the shim."""
    code = """
        import gpupool
        gpupool.install_cupy()
        import cupy
        assert cupy.__name__ == "gpupool.cupy", cupy.__name__
        gpupool.local_pool(backend="emu", emu_devices=1, emu_memory="1GiB")
        with gpupool.attach(1, fraction=0.5) as ordinals:
            print("attached", list(ordinals), float(cupy.arange(10).sum()))
        try:
            gpupool.attach(2)
        except gpupool.AllocationError as exc:
            print("refused:", exc)
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("GPUPOOL_") or k == "GPUPOOL_CACHE_DIR"
    }
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "attached [0] 45.0" in result.stdout
    assert "can never fit" in result.stdout
    assert "gpupool.local_pool(emu_devices=N, emu_memory=SIZE) makes it larger" in result.stdout
