"""The benchmark's results as a table (rich), bandwidth curves (matplotlib) and JSON records."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from gpupool.bench.runner import COPIES, Record
from gpupool.units import format_size

BANDWIDTH = (*COPIES, "peer", "allreduce")  # the operations figured in GB/s, by size


def _columns(records: Sequence[Record]) -> list[str]:
    """Targets in the order they were measured: natives, raw links, then transports."""
    names: list[str] = []
    for record in records:
        if record.transport not in names:
            names.append(record.transport)
    return names


def _figure(record: Record) -> str:
    if record.gbps is not None:
        return f"{record.gbps:.2f} GB/s"
    if record.per_s is not None:
        return f"{record.per_s:,.0f}/s ({record.us:.1f} µs)"
    return f"{record.us:.1f} µs"


def _times(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}x"


def print_tables(records: Sequence[Record], console: Console) -> None:
    """One table per operation; a row per size and target, with its two ratios."""
    names = _columns(records)
    for op, title in (
        *((copy, f"{copy.upper()} bandwidth (median)") for copy in COPIES),
        ("peer", "Device-to-device copies between devices, worker to worker (median)"),
        ("allreduce", "All-reduce of float32 (sum): algorithm and bus bandwidth (nccl-tests)"),
        ("latency", "Synchronizing 4-byte copy: median round trip"),
        ("launch", "Asynchronous kernel launches"),
    ):
        rows = sorted(
            (r for r in records if r.op == op),
            key=lambda r: (r.size_bytes, names.index(r.transport)),
        )
        if not rows:
            continue
        copies = op in BANDWIDTH
        table = Table(title=title)
        headers = ("size", "target", "figure", "remote/native", "remote/raw link")
        shown = headers if copies else headers[1:] if op == "latency" else headers[1:4]
        for header in shown:
            table.add_column(header, justify="left" if header == "target" else "right")
        previous = None
        for record in rows:
            size = format_size(record.size_bytes) if record.size_bytes != previous else ""
            previous = record.size_bytes
            ratio = None if record.native else record.ratio
            cells = [record.transport, _figure(record), _times(ratio)]
            if copies:
                cells = [size, *cells, _times(record.link_ratio)]
            elif op == "latency":
                cells.append(_times(record.link_ratio))
            dim = record.native or record.transport.startswith("raw-")
            table.add_row(*cells, style="dim" if dim else None)
        console.print(table)
    print_ops_table(records, console)


def print_ops_table(records: Sequence[Record], console: Console) -> None:
    """Small operations: a row per loop and target, with what one operation cost."""
    rows = [r for r in records if r.op.startswith("ops-")]
    if not rows:
        return
    table = Table(title="Small array operations, per operation (median)")
    for header in (
        "loop",
        "target",
        "time",
        "client CPU",
        "daemon CPU",
        "round trips",
        "mallocs",
        "remote/native",
    ):
        table.add_column(header, justify="left" if header in ("loop", "target") else "right")
    previous = None
    for record in rows:
        loop = record.op.removeprefix("ops-")
        table.add_row(
            loop if loop != previous else "",
            record.transport,
            f"{record.us:.1f} µs",
            "" if record.client_us is None else f"{record.client_us:.1f} µs",
            "" if record.worker_us is None else f"{record.worker_us:.1f} µs",
            "" if record.round_trips is None else f"{record.round_trips:.4f}",
            "" if record.mallocs is None else f"{record.mallocs:.4f}",
            "" if record.native else _times(record.ratio),
            style="dim" if record.native else None,
        )
        previous = loop
    console.print(table)


def write_json(records: Sequence[Record], path: Path, meta: dict[str, object]) -> None:
    document = {"meta": meta, "records": [record.to_json() for record in records]}
    path.write_text(json.dumps(document, indent=1) + "\n")


def plot(records: Sequence[Record], path: Path, title: str) -> None:
    """Bandwidth against size, one panel a direction, one line a target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [op for op in BANDWIDTH if any(r.op == op and r.gbps for r in records)]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.2), squeeze=False)
    names = _columns(records)
    colors = {name: f"C{index % 10}" for index, name in enumerate(names)}  # same in each panel
    for axis, op in zip(axes[0], panels, strict=True):
        for name in names:
            points = sorted(
                (r.size_bytes, r.gbps) for r in records if r.op == op and r.transport == name
            )
            if points:
                style = "--" if name.startswith(("native", "raw-")) else "-"
                xs, ys = zip(*points, strict=True)
                axis.plot(xs, ys, style, color=colors[name], marker="o", markersize=3, label=name)
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.set_title(op.upper())
        axis.set_xlabel("size (bytes)")
        axis.set_ylabel("GB/s")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
