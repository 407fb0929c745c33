"""Running the benchmark: every target, operation and size, alternating, into records.

Targets take turns for every repetition (native, raw link, then each transport), so a busy
moment of the machine falls on all of them alike; each figure is the median of its
repetitions.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

from gpupool.bench import ops
from gpupool.bench.rawlink import RawLink
from gpupool.bench.record import Record
from gpupool.bench.targets import (
    PinnedRemoteTarget,
    RawMemoryTarget,
    RawTcpTarget,
    RemoteTarget,
    Target,
    native_targets,
)
from gpupool.errors import GpupoolError

KINDS = ("bandwidth", "latency", "launch", "ops")
COPIES = ("h2d", "d2h", "d2d")
EMULATOR_SIZES = [4 << 10, 64 << 10, 1 << 20, 16 << 20, 256 << 20]
GPU_SIZES = [*EMULATOR_SIZES, 1 << 30]
LATENCY_SAMPLES = 200
LATENCY_TURN = 20  # round trips a target makes in one turn
LAUNCHES = 2000
LAUNCH_REPEATS = 3
# The raw link each transport is read against, else raw-tcp; none for pinned copies over
# shm://, which move no bytes over a link (the worker copies the client's own pages).
RAW_LINK: dict[str, str | None] = {"shm": "raw-shm", "shm-pinned": None}
# The native figure each remote one is read against, where the run has it (a GPU: CuPy's
# pinned "native" and "native-pageable"); else "native". shm:// from NumPy arrays is held to
# native pageable copies, from the shim's pinned memory ("shm-pinned") to native pinned ones.
NATIVE_BASE = {"shm": "native-pageable"}
PINNED = ("shm",)  # transports also measured from pinned host memory
SINGLE_STREAM = "tcp-x1"  # tcp:// on one connection, beside the striped default


@dataclass(frozen=True)
class Plan:
    kinds: Sequence[str]
    sizes: Sequence[int]
    transports: Sequence[str]
    stripes: int
    ops: int = ops.OPS  # small operations a loop makes in one turn

    def device_buffers(self) -> int:
        """Buffers of the largest size held on the device at once while copies alternate:
        two for each remote target (the raw link and native targets hold none there)."""
        remote = 0
        for transport in self.transports:
            remote += 1
            remote += transport == "tcp" and self.stripes > 1
            remote += transport in PINNED and "bandwidth" in self.kinds
        return 2 * remote

    def fitting(self, free: int) -> tuple[Plan, list[int]]:
        """This plan with only the copy sizes whose buffers fit in ``free`` device bytes
        (with a tenth to spare), and the sizes left out."""
        room = free * 9 // 10
        kept = [size for size in self.sizes if size * self.device_buffers() <= room]
        skipped = [size for size in self.sizes if size not in kept]
        fitted = Plan(self.kinds, kept, self.transports, self.stripes, self.ops)
        return fitted, skipped if "bandwidth" in self.kinds else []

    def steps(self, targets: Sequence[Target]) -> int:
        """Measurements the plan makes with ``targets`` (for the progress bar)."""
        device = [t for t in targets if not t.name.startswith("raw-")]
        bandwidth = sum(reps(size) for size in self.sizes) if "bandwidth" in self.kinds else 0
        latency = len(targets) if "latency" in self.kinds else 0
        launch = len(device) if "launch" in self.kinds else 0
        small = (
            (1 + len(self.transports)) * len(ops.LOOPS) * ops.TURNS if "ops" in self.kinds else 0
        )
        return bandwidth * len(targets) + latency + launch + small


def reps(size: int) -> int:
    return 20 if size <= 1 << 20 else 7 if size <= 16 << 20 else 5


@contextmanager
def targets(address: str, plan: Plan) -> Iterator[list[Target]]:
    """Native, raw-link and remote targets, closed on the way out."""
    with ExitStack() as stack:
        chosen: list[Target] = list(native_targets())
        if "bandwidth" in plan.kinds or "latency" in plan.kinds:
            link = RawLink(max(1, plan.stripes))
            stack.callback(link.close)
            chosen.append(RawTcpTarget(link, 1))
            if "tcp" in plan.transports and plan.stripes > 1:
                chosen.append(RawTcpTarget(link, plan.stripes))
            if "shm" in plan.transports:
                chosen.append(RawMemoryTarget(link))
        for transport in plan.transports:
            chosen.append(RemoteTarget(address, transport))
            if transport == "tcp" and plan.stripes > 1:
                chosen.append(_single_stream(address))
            if transport in PINNED and "bandwidth" in plan.kinds:
                chosen.append(PinnedRemoteTarget(address, transport))
        for target in chosen:
            stack.callback(target.close)
        yield chosen


def _single_stream(address: str) -> Target:
    """tcp:// on one connection: the link's session is opened with one stripe."""
    from gpupool.transport.links.frame_links import ENV_STRIPES

    striped = os.environ.get(ENV_STRIPES)
    os.environ[ENV_STRIPES] = "1"  # read once, as the session opens
    try:
        return RemoteTarget(address, "tcp", name=SINGLE_STREAM)
    finally:
        if striped is None:
            del os.environ[ENV_STRIPES]
        else:
            os.environ[ENV_STRIPES] = striped


@dataclass
class Outcome:
    """What a run measured, and why it stopped early if it did (the records made before
    that are kept: a failing target does not cost the figures of the others)."""

    records: list[Record]
    failure: str | None = None


def run(
    address: str,
    plan: Plan,
    start: Callable[[int], None],
    advance: Callable[[str], None],
    daemon_pid: int | None = None,
) -> Outcome:
    """Measure ``plan`` against device 0 of the daemon at ``address``.

    ``start`` learns how many steps there will be, ``advance`` is told each one's name.
    ``daemon_pid``: the daemon's process where it runs here, whose CPU time (its workers'
    included) the small operations are read with.
    """
    records: list[Record] = []
    copies = [kind for kind in plan.kinds if kind != "ops"]
    try:
        if not copies:
            start(plan.steps([]))
            records += ops.run(address, list(plan.transports), daemon_pid, advance, plan.ops)
            return Outcome(_with_ratios(records))
        with targets(address, plan) as chosen:
            start(plan.steps(chosen))
            if "bandwidth" in plan.kinds:
                for size in plan.sizes:
                    records += _bandwidth(chosen, size, advance)
            if "latency" in plan.kinds:
                records += _latency(chosen, advance)
            if "launch" in plan.kinds:
                records += _launches(chosen, advance)
        if "ops" in plan.kinds:
            records += ops.run(address, list(plan.transports), daemon_pid, advance, plan.ops)
    except (GpupoolError, OSError) as exc:
        return Outcome(_with_ratios(records), f"{type(exc).__name__}: {exc}")
    return Outcome(_with_ratios(records))


def _bandwidth(chosen: list[Target], size: int, advance: Callable[[str], None]) -> list[Record]:
    times: dict[tuple[str, str], list[float]] = {}
    for target in chosen:
        target.prepare(size)
    try:
        for _ in range(reps(size)):
            for target in chosen:
                advance(f"{target.name} {size >> 10} KiB")
                for op in COPIES:
                    seconds = getattr(target, op)(size)
                    if seconds is not None:
                        times.setdefault((target.name, op), []).append(seconds)
    finally:
        for target in chosen:
            target.release()
    natives = {target.name for target in chosen if target.native}
    return [
        Record(op, name, size, name in natives, gbps=size / statistics.median(samples) / 1e9)
        for (name, op), samples in times.items()
    ]


def _latency(chosen: list[Target], advance: Callable[[str], None]) -> list[Record]:
    """Round trips in turns of LATENCY_TURN samples a target, so that a busy moment of the
    machine falls on every target alike (as the bandwidth repetitions alternate)."""
    measured = [target for target in chosen if target.tiny_round_trip() is not None]  # warm
    samples: dict[str, list[float]] = {target.name: [] for target in measured}
    turns = LATENCY_SAMPLES // LATENCY_TURN
    for turn in range(turns):
        for target in measured:
            samples[target.name] += [_seconds(target.tiny_round_trip) for _ in range(LATENCY_TURN)]
            if turn == turns - 1:
                advance(f"{target.name} round trips")
    for target in chosen:
        if target not in measured:
            advance(f"{target.name} round trips")
    return [
        Record("latency", t.name, 4, t.native, us=statistics.median(samples[t.name]) * 1e6)
        for t in measured
    ]


def _seconds(measure: Callable[[], float | None]) -> float:
    seconds = measure()
    assert seconds is not None  # a target that measures round trips measures every one
    return seconds


def _launches(chosen: list[Target], advance: Callable[[str], None]) -> list[Record]:
    records = []
    for target in chosen:
        advance(f"{target.name} launches")
        target.launches(10)  # loads the kernel
        samples = [target.launches(LAUNCHES) for _ in range(LAUNCH_REPEATS)]
        if all(sample is not None for sample in samples):
            seconds = statistics.median(s for s in samples if s is not None) / LAUNCHES
            records.append(
                Record("launch", target.name, 0, target.native, us=seconds * 1e6, per_s=1 / seconds)
            )
    return records


def _with_ratios(records: list[Record]) -> list[Record]:
    """Fill in ``ratio`` (against native: NATIVE_BASE's where the run has it) and
    ``link_ratio`` (against the raw link)."""
    by_name = {(r.op, r.transport, r.size_bytes): r for r in records}
    for record in records:
        named = (record.op, NATIVE_BASE.get(record.transport, "native"), record.size_bytes)
        base = by_name.get(named) or by_name.get((record.op, "native", record.size_bytes))
        if base is not None:
            record.ratio = _ratio(record, base)
        link_name = RAW_LINK.get(record.transport, "raw-tcp")
        if record.native or record.transport.startswith("raw-") or link_name is None:
            continue
        link = by_name.get((record.op, link_name, record.size_bytes))
        if link is not None:
            record.link_ratio = _ratio(record, link)
    return records


def _ratio(record: Record, base: Record) -> float | None:
    if record.gbps is not None and base.gbps:
        return record.gbps / base.gbps
    if record.per_s is not None and base.per_s:
        return record.per_s / base.per_s
    if record.us is not None and base.us:
        return record.us / base.us
    return None
