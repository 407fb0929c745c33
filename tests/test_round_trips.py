"""Example programs in their steady state: no malloc reaches the daemon, and they wait for it
no more often than they synchronize (as CuPy waits: a host copy, a scalar, a mask's count).

Each program runs in this process through the shim; ``gpupool.stats()`` is read between two
points of its loop, after the first steps have filled the pool.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import gpupool
import gpupool.cupy as cp
from gpupool.server.daemon import Daemon, start_daemon
from tests.conftest import EXAMPLES


@dataclass(frozen=True)
class Counts:
    round_trips: int
    mallocs: int

    @classmethod
    def now(cls) -> Counts:
        stats = gpupool.stats()
        return cls(stats.round_trips, stats.mallocs)

    def __sub__(self, other: Counts) -> Counts:
        return Counts(self.round_trips - other.round_trips, self.mallocs - other.mallocs)


@pytest.fixture(scope="module")
def two_devices() -> Iterator[Daemon]:
    daemon = start_daemon(backend="emu", emu_devices=2, emu_memory=1 << 30)
    gpupool.connect(daemon.address)
    yield daemon
    gpupool.disconnect()
    daemon.stop()


def run_example(path: Path, monkeypatch: pytest.MonkeyPatch, **names: Any) -> dict[str, Any]:
    """Run an example as ``import cupy`` would under ``gpupool run``: the shim is its cupy.
    ``names`` are put in its globals first (a ``print`` of our own, say)."""
    monkeypatch.setitem(sys.modules, "cupy", cp)
    namespace: dict[str, Any] = {"__name__": "__example__", **names}
    exec(compile(path.read_text(), str(path), "exec"), namespace)
    return namespace


def test_mlp_training_steps_make_no_round_trip(
    two_devices: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each step keeps a new loss scalar: carved from an arena, not a malloc. The losses are
    read once, after the loop (its only synchronizing calls)."""
    example = run_example(EXAMPLES / "cupy" / "mlp_softmax.py", monkeypatch, print=lambda *a: None)

    def steps(count: int) -> Counts:
        """``count`` steps from an empty cache (freed blocks would stand in for new ones)."""
        args = [cp.asarray(example[name]) for name in ("x", "y")]
        params = [cp.asarray(p) for p in example["params"]]
        cp.get_default_memory_pool().free_all_blocks()
        start = Counts.now()
        _losses, _accuracy, _w1 = example["train"](cp, *args, params, steps=count)
        cp.cuda.Device().synchronize()
        return Counts.now() - start

    short, long = steps(5), steps(25)
    per_20_steps = long - short
    assert per_20_steps == Counts(round_trips=0, mallocs=0)


def test_kmeans_waits_only_where_cupy_synchronizes(
    two_devices: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An iteration synchronizes k + 1 times: the count of each cluster's mask, and the shift."""
    example = run_example(EXAMPLES / "cupy" / "kmeans.py", monkeypatch, print=lambda *a: None)
    points, k = cp.asarray(example["points"]), example["k"]

    def iterations(count: int) -> tuple[Counts, int]:
        cp.get_default_memory_pool().free_all_blocks()
        start = Counts.now()
        *_, steps = example["kmeans"](cp, points, points[:3].copy(), iterations=count)
        return Counts.now() - start, steps

    (short, few), (long, more) = iterations(2), iterations(6)
    assert more > few
    extra = long - short
    assert extra.mallocs == 0
    assert extra.round_trips <= (k + 1) * (more - few)


def test_data_parallel_training_waits_once_a_device_and_step(
    two_devices: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    """examples/train.py copies each device's gradient to the host every step (and a loss
    scalar a device every 25 steps, where it prints): nothing else waits."""
    printed: list[Counts] = []
    run_example(EXAMPLES / "train.py", monkeypatch, print=lambda *a: printed.append(Counts.now()))
    devices = cp.cuda.runtime.getDeviceCount()
    assert devices == 2 and len(printed) == 6  # steps 0, 25, 50, 75, 100, and the accuracy
    between = printed[4] - printed[2]  # steps 51 to 100
    assert between.mallocs == 0
    assert between.round_trips <= devices * 50 + devices * 2
