"""The benchmark's results as a table (rich), bandwidth curves (matplotlib) and JSON records."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from gpupool.bench.runner import COPIES, Record
from gpupool.units import format_size


def _columns(records: Sequence[Record]) -> list[str]:
    """Targets in the order they were measured: natives, raw links, then transports."""
    names: list[str] = []
    for record in records:
        if record.transport not in names:
            names.append(record.transport)
    return names


def _cell(record: Record | None) -> str:
    if record is None:
        return "—"
    if record.gbps is not None:
        text = f"{record.gbps:.2f} GB/s"
    elif record.per_s is not None:
        text = f"{record.per_s:,.0f}/s"
    else:
        text = f"{record.us:.1f} µs"
    ratios = []
    if record.ratio is not None and not record.native:
        ratios.append(f"{record.ratio:.2f}x nat")
    if record.link_ratio is not None:
        ratios.append(f"{record.link_ratio:.2f}x link")
    return text + ("\n[dim]" + " ".join(ratios) + "[/dim]" if ratios else "")


def print_tables(records: Sequence[Record], console: Console) -> None:
    names = _columns(records)
    index = {(r.op, r.transport, r.size_bytes): r for r in records}
    for op in COPIES:
        sizes = sorted({r.size_bytes for r in records if r.op == op})
        if not sizes:
            continue
        table = Table(
            title=f"{op.upper()} bandwidth (median; x nat: of native, x link: of the raw link)",
            show_lines=True,
        )
        table.add_column("size", justify="right")
        shown = [name for name in names if any((op, name, s) in index for s in sizes)]
        for name in shown:
            table.add_column(name, justify="right")
        for size in sizes:
            row = [_cell(index.get((op, name, size))) for name in shown]
            table.add_row(format_size(size), *row)
        console.print(table)
    small = [r for r in records if r.op in ("latency", "launch")]
    if small:
        table = Table(title="Synchronizing 4-byte copy (median round trip) and async launches")
        table.add_column("")
        shown = [name for name in names if any(r.transport == name for r in small)]
        for name in shown:
            table.add_column(name, justify="right")
        for op, label in (("latency", "round trip"), ("launch", "launches")):
            cells = [_cell(index.get((op, name, 4 if op == "latency" else 0))) for name in shown]
            table.add_row(label, *cells)
        console.print(table)


def write_json(records: Sequence[Record], path: Path, meta: dict[str, object]) -> None:
    document = {"meta": meta, "records": [record.to_json() for record in records]}
    path.write_text(json.dumps(document, indent=1) + "\n")


def plot(records: Sequence[Record], path: Path, title: str) -> None:
    """Bandwidth against size, one panel a direction, one line a target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(COPIES), figsize=(5 * len(COPIES), 4.2), sharey=False)
    for axis, op in zip(axes, COPIES, strict=True):
        for name in _columns(records):
            points = sorted(
                (r.size_bytes, r.gbps) for r in records if r.op == op and r.transport == name
            )
            if points:
                style = "--" if name.startswith(("native", "raw-")) else "-"
                xs, ys = zip(*points, strict=True)
                axis.plot(xs, ys, style, marker="o", markersize=3, label=name)
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.set_title(op.upper())
        axis.set_xlabel("copy size (bytes)")
        axis.set_ylabel("GB/s")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
