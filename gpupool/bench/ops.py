"""Loops of small array operations: natively, and through the CuPy shim over each transport.

A program made of many small operations is bound by what each operation costs around the
device's work: encoding it, queuing it, and the worker's checks. The same loops run on the
native array module (CuPy on a local GPU, else NumPy) and on ``gpupool.cupy`` connected
over each transport in turn, and each figure is read with the CPU time the client and the
daemon's processes spent on it and the round trips it made, per operation. Turns alternate
between the targets, as the other benches do, so that a busy moment of the machine falls on
all of them alike.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np

from gpupool.bench.record import Record

N = 256  # elements of the arrays in the loops: small, so each operation costs little
OPS = 5000  # operations a loop makes in one turn
TURNS = 3
LOOPS = ("elementwise", "in-place", "reduce", "mlp-step")
MLP = (64, 16, 32, 4)  # batch, inputs, hidden, classes
MLP_OPS = 16  # array operations in one training step (see _mlp_step)
SETTLE_S, SETTLE_TRIES = 0.2, 25  # how long the daemon's processes get to become idle

Loop = Callable[[int], None]  # runs N operations, without waiting for them


def _elementwise(xp: ModuleType) -> Loop:
    a, b = xp.ones(N, xp.float32), xp.full(N, 2.0, xp.float32)

    def run(count: int) -> None:
        for _ in range(count):
            a + b  # a new result each time: its allocation is part of the cost

    return run


def _in_place(xp: ModuleType) -> Loop:
    a, b = xp.ones(N, xp.float32), xp.full(N, 1e-3, xp.float32)

    def run(count: int) -> None:
        for _ in range(count):
            xp.add(a, b, out=a)  # a += b

    return run


def _reduce(xp: ModuleType) -> Loop:
    a = xp.ones(N, xp.float32)

    def run(count: int) -> None:
        for _ in range(count):
            a.sum()  # a 0-d result, left on the device as CuPy leaves it

    return run


def _mlp_step(xp: ModuleType) -> Loop:
    """A training step of a two-layer MLP with a squared loss, by hand: MLP_OPS operations."""
    batch, d, h, c = MLP
    rng = np.random.default_rng(0)
    x = xp.asarray(rng.standard_normal((batch, d)).astype(np.float32))
    t = xp.asarray(rng.standard_normal((batch, c)).astype(np.float32))
    w1 = xp.asarray((rng.standard_normal((d, h)) * 0.1).astype(np.float32))
    w2 = xp.asarray((rng.standard_normal((h, c)) * 0.1).astype(np.float32))
    losses = []

    def run(count: int) -> None:
        for _ in range(count // MLP_OPS):
            z = x @ w1  # 1
            a = xp.maximum(z, 0)  # 2
            y = a @ w2  # 3
            err = y - t  # 4
            losses.append((err * err).mean())  # 5, 6
            g = err * (2.0 / batch)  # 7
            gw2 = a.T @ g  # 8
            ga = g @ w2.T  # 9
            xp.multiply(ga, z > 0, out=ga)  # 10, 11
            gw1 = x.T @ ga  # 12
            xp.subtract(w2, gw2 * 0.01, out=w2)  # 13, 14
            xp.subtract(w1, gw1 * 0.01, out=w1)  # 15, 16
        del losses[:-1]  # one loss kept a step, as a program logs them; not a growing list

    return run


WORKLOADS: dict[str, Callable[[ModuleType], Loop]] = {
    "elementwise": _elementwise,
    "in-place": _in_place,
    "reduce": _reduce,
    "mlp-step": _mlp_step,
}


@dataclass
class Sample:
    """One turn of one loop: seconds, CPU seconds of the client and the daemon, round trips."""

    seconds: float
    client: float
    worker: float | None
    round_trips: int
    mallocs: int


def process_tree_cpu(pid: int) -> float | None:
    """CPU seconds (user + system) of ``pid`` and every process below it (Linux ``/proc``);
    None where they cannot be read. The daemon's workers are its children, and idle ones
    cost nothing, so the daemon's tree is what serving the loops cost."""
    try:
        tick = os.sysconf("SC_CLK_TCK")
        stats: dict[int, tuple[int, float]] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                text = (entry / "stat").read_text()
            except OSError:
                continue
            fields = text[text.rindex(")") + 2 :].split()
            stats[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    except (OSError, ValueError):
        return None
    if pid not in stats:
        return None
    total, frontier = 0.0, [pid]
    while frontier:
        parent = frontier.pop()
        total += stats[parent][1]
        frontier += [child for child, (ppid, _) in stats.items() if ppid == parent]
    return total


class OpsTarget:
    """An array module to run the loops on: ``native`` (no daemon), or the shim connected to
    a daemon over one transport (``connect`` makes it the process's connection)."""

    def __init__(
        self,
        name: str,
        xp: ModuleType,
        synchronize: Callable[[], None],
        connect: Callable[[], None] | None = None,
        daemon_pid: int | None = None,
    ) -> None:
        self.name = name
        self.native = connect is None
        self._xp = xp
        self._synchronize = synchronize
        self._connect = connect
        self._daemon_pid = daemon_pid
        self._loops: dict[str, Loop] = {}

    def enter(self) -> None:
        """Make this target's connection current and its loops ready (not timed)."""
        if self._connect is not None:
            self._connect()
            self._loops = {}
        if not self._loops:
            self._loops = {name: make(self._xp) for name, make in WORKLOADS.items()}
            for loop in self._loops.values():  # warm: pools, encodings, the worker's caches
                loop(2 * MLP_OPS)
            self._synchronize()
        self._settle()

    def _settle(self) -> None:
        """Wait (a few seconds at most) until the daemon's processes are idle: a session takes
        a warm worker, and the daemon starts another in its place, whose start-up is no part
        of an operation's cost."""
        if self._daemon_pid is None:
            return
        before = self._worker_cpu()
        for _ in range(SETTLE_TRIES):
            time.sleep(SETTLE_S)
            now = self._worker_cpu()
            if now == before:
                return
            before = now

    def turn(self, loop: str, count: int) -> Sample:
        """``count`` operations of ``loop``, then a wait for them all."""
        from gpupool.client.session import STATS

        worker = self._worker_cpu()
        trips, mallocs = STATS.round_trips, STATS.mallocs
        cpu, start = time.process_time(), time.perf_counter()
        self._loops[loop](count)
        self._synchronize()
        seconds, client = time.perf_counter() - start, time.process_time() - cpu
        after = self._worker_cpu()
        return Sample(
            seconds,
            client,
            None if worker is None or after is None else after - worker,
            STATS.round_trips - trips - (0 if self.native else 1),  # less the closing wait
            STATS.mallocs - mallocs,
        )

    def _worker_cpu(self) -> float | None:
        if self._daemon_pid is None:
            return None
        return process_tree_cpu(self._daemon_pid)


def native_target() -> OpsTarget:
    """CuPy on this host's GPU where it has one, else NumPy on its CPU."""
    try:
        import cupy

        if cupy.__name__ == "cupy" and cupy.cuda.runtime.getDeviceCount() > 0:
            return OpsTarget("native", cupy, cupy.cuda.Device().synchronize)
    except Exception:  # no CuPy, no driver, no device: all mean "no local GPU"
        pass
    return OpsTarget("native", np, lambda: None)


def remote_targets(
    address: str, transports: list[str], daemon_pid: int | None
) -> Iterator[OpsTarget]:
    """The shim over each transport (the process's connection, replaced at each turn)."""
    import gpupool.cupy as shim
    from gpupool.client import context

    def synchronize() -> None:
        shim.cuda.Device().synchronize()

    for transport in transports:

        def connect(transport: str = transport) -> None:
            context.connect([address], transport=transport)

        yield OpsTarget(transport, shim, synchronize, connect, daemon_pid)


def run(
    address: str,
    transports: list[str],
    daemon_pid: int | None,
    advance: Callable[[str], None],
    ops: int = OPS,
    turns: int = TURNS,
) -> list[Record]:
    """Records of every loop on every target (medians of ``turns`` alternating turns)."""
    from gpupool.client import context

    targets = [native_target(), *remote_targets(address, transports, daemon_pid)]
    samples: dict[tuple[str, str], list[Sample]] = {}
    try:
        for _ in range(turns):
            for target in targets:
                target.enter()
                for loop in LOOPS:
                    advance(f"{target.name} {loop}")
                    samples.setdefault((target.name, loop), []).append(target.turn(loop, ops))
    finally:
        context.disconnect()
    records = []
    for target in targets:
        for loop in LOOPS:
            taken = samples[target.name, loop]

            def per_op(values: list[float]) -> float:
                return statistics.median(values) / ops * 1e6

            workers = [s.worker for s in taken if s.worker is not None]
            records.append(
                Record(
                    f"ops-{loop}",
                    target.name,
                    N * 4,
                    target.native,
                    us=per_op([s.seconds for s in taken]),
                    client_us=per_op([s.client for s in taken]),
                    worker_us=per_op(workers) if len(workers) == len(taken) else None,
                    round_trips=statistics.median(s.round_trips for s in taken) / ops,
                    mallocs=statistics.median(s.mallocs for s in taken) / ops,
                )
            )
    return records
