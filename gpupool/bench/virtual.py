"""``gpupool bench peer`` and ``gpupool bench collective``: a virtual node's own data paths.

``peer`` measures, in turns for every repetition: the raw link (one TCP stream, and striped,
to a peer process: what a cross-daemon copy could at best move), a host memcpy of the same size
(the emulator's "native" device-to-device copy; CuPy's ``cudaMemcpyPeer`` where this host has
two GPUs), and peer copies worker to worker, between two daemons and inside one. Each copy is
timed until the destination device has it (a synchronize on that device).

``collective`` measures an all-reduce of float32 over every device of the daemons, as
nccl-tests report it: algorithm bandwidth = size / time, bus bandwidth = algorithm bandwidth x
2(N-1)/N, against the single-stream raw link.
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

import gpupool
from gpupool import runtime as rt
from gpupool.bench.rawlink import RawLink, memcpy_seconds
from gpupool.bench.runner import Record, reps
from gpupool.errors import GpupoolError

Advance = Callable[[str], None]


def peer(
    addresses: Sequence[str], sizes: Sequence[int], stripes: int, advance: Advance
) -> list[Record]:
    """Peer copies on the daemons at ``addresses``: the first two devices of the first daemon
    (same daemon), and the first device of each of the first two daemons (across)."""
    context = gpupool.connect(list(addresses))
    try:
        by_daemon: dict[str, list[int]] = {}
        for ordinal, device in enumerate(context.devices):
            if device is not None:  # None: a detached ordinal
                by_daemon.setdefault(device.address, []).append(ordinal)
        daemons = list(by_daemon.values())
        pairs: dict[str, tuple[int, int]] = {}
        if len(daemons) > 1:
            pairs["cross-daemon"] = (daemons[0][0], daemons[1][0])
        if len(daemons[0]) > 1:
            pairs["same-daemon"] = (daemons[0][0], daemons[0][1])
        if not pairs:
            raise GpupoolError("gpupool bench peer: needs two daemons, or a daemon of two devices")
        link = RawLink(max(1, stripes))
        try:
            return _with_ratios(_peer_runs(pairs, sizes, stripes, link, advance))
        finally:
            link.close()
    finally:
        gpupool.disconnect()


def _peer_runs(
    pairs: dict[str, tuple[int, int]],
    sizes: Sequence[int],
    stripes: int,
    link: RawLink,
    advance: Advance,
) -> list[Record]:
    records = []
    for size in sizes:
        host, other = np.ones(size, np.uint8), np.empty(size, np.uint8)
        buffers: dict[str, tuple[int, int, int, int, int]] = {}
        for name, (src, dst) in pairs.items():
            rt.setDevice(src)
            source = rt.malloc(size)
            rt.setDevice(dst)
            target = rt.malloc(size)
            buffers[name] = (src, source, dst, target, size)
            _peer_copy(buffers[name])  # opens the link; warm
        times: dict[str, list[float]] = {}
        moves: dict[str, Callable[[], float]] = {
            "raw-tcp": functools.partial(link.send, host.data, 1),
            "native": functools.partial(memcpy_seconds, other, host),
            **{name: functools.partial(_peer_copy, each) for name, each in buffers.items()},
        }
        if stripes > 1:
            moves[f"raw-tcp-x{stripes}"] = functools.partial(link.send, host.data, stripes)
        for _ in range(reps(size)):
            for name, move in moves.items():
                advance(f"{name} {size >> 10} KiB")
                times.setdefault(name, []).append(move())
        for _src, source, _dst, target, _size in buffers.values():
            rt.free(source)
            rt.free(target)
        records += [
            Record(
                "peer",
                name,
                size,
                name == "native",
                gbps=size / statistics.median(samples) / 1e9,
            )
            for name, samples in times.items()
        ]
    return records


def _peer_copy(buffers: tuple[int, int, int, int, int]) -> float:
    """Seconds for a peer copy to be on its destination device."""
    src, source, dst, target, size = buffers
    start = time.perf_counter()
    rt.memcpyPeer(target, dst, source, src, size)
    rt.setDevice(dst)
    rt.deviceSynchronize()
    return time.perf_counter() - start


def collective(addresses: Sequence[str], sizes: Sequence[int], advance: Advance) -> list[Record]:
    """All-reduce (sum, float32) over every device of the daemons at ``addresses``."""
    from gpupool.cupy.cuda import nccl

    context = gpupool.connect(list(addresses))
    try:
        count = len(context.devices)
        comms = nccl.NcclCommunicator.initAll(count)
        link = RawLink(1)
        records = []
        try:
            for size in sizes:
                elements = size // 4
                buffers = []
                for ordinal in range(count):
                    rt.setDevice(ordinal)
                    buffers.append(rt.malloc(elements * 4))
                    rt.memset(buffers[-1], 0, elements * 4)
                host = np.ones(size, np.uint8)
                _all_reduce(comms, buffers, elements)  # warm: the ring's links open
                times: dict[str, list[float]] = {"raw-tcp": [], f"ring-{count}": []}
                for _ in range(reps(size)):
                    advance(f"all-reduce {size >> 10} KiB")
                    times["raw-tcp"].append(link.send(host.data, 1))
                    times[f"ring-{count}"].append(_all_reduce(comms, buffers, elements))
                for ordinal, ptr in enumerate(buffers):
                    rt.setDevice(ordinal)
                    rt.free(ptr)
                raw = size / statistics.median(times["raw-tcp"]) / 1e9
                algorithm = size / statistics.median(times[f"ring-{count}"]) / 1e9
                bus = algorithm * 2 * (count - 1) / count
                records += [
                    Record("allreduce", "raw-tcp", size, True, gbps=raw),
                    Record("allreduce", f"ring-{count} algbw", size, False, gbps=algorithm),
                    Record(
                        "allreduce",
                        f"ring-{count} busbw",
                        size,
                        False,
                        gbps=bus,
                        link_ratio=bus / raw,
                    ),
                ]
        finally:
            link.close()
        return records
    finally:
        gpupool.disconnect()


def _all_reduce(comms: Sequence[Any], buffers: list[int], elements: int) -> float:
    from gpupool.cupy.cuda import nccl

    start = time.perf_counter()
    nccl.groupStart()
    for ordinal, (comm, ptr) in enumerate(zip(comms, buffers, strict=True)):
        rt.setDevice(ordinal)
        comm.allReduce(ptr, ptr, elements, nccl.NCCL_FLOAT32, nccl.NCCL_SUM, 0)
    nccl.groupEnd()
    for ordinal in range(len(buffers)):
        rt.setDevice(ordinal)
        rt.deviceSynchronize()
    return time.perf_counter() - start


def _with_ratios(records: list[Record]) -> list[Record]:
    """Cross-daemon copies against the single-stream raw link, same-daemon ones against
    native (a host memcpy on the emulator)."""
    by_name = {(r.transport, r.size_bytes): r for r in records}
    for record in records:
        native = by_name.get(("native", record.size_bytes))
        raw = by_name.get(("raw-tcp", record.size_bytes))
        if record.transport.endswith("daemon"):
            if native is not None and native.gbps and record.gbps:
                record.ratio = record.gbps / native.gbps
            if raw is not None and raw.gbps and record.gbps:
                record.link_ratio = record.gbps / raw.gbps
        elif record.transport.startswith("raw-tcp-x") and raw is not None and raw.gbps:
            record.link_ratio = (record.gbps or 0) / raw.gbps
    return records
