"""Render the Grafana dashboard's panels from a real pool's metrics, without Grafana.

``python docs/dashboard/render.py`` starts a scheduler and a pooled emulator daemon with their
metrics ports, runs a short workload against them (allocations, a queued request, copies,
launches, array operations over several transports, a crashing kernel), scrapes both
``/metrics`` every second, evaluates each panel's PromQL on the scrapes and draws the panels
where the dashboard's ``gridPos`` puts them: ``docs/img/dashboard.png`` (a series that stays
0 throughout is left out, to keep the legends short).

The queries use a small part of PromQL (``sum``, ``sum by (...)``, ``rate(...[w])``,
selectors with ``=`` matchers); :func:`parse` reads exactly that part and refuses the rest,
so the dashboard stays within what is evaluated here (and the tests use :func:`metric_names`
to check that every query names metrics the code exports).
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "kubernetes" / "base" / "dashboards" / "gpupool.json"
PICTURE = ROOT / "docs" / "img" / "dashboard.png"

Labels = frozenset[tuple[str, str]]
Scrape = dict[tuple[str, Labels], float]
Vector = dict[Labels, float]
_TOKEN = re.compile(
    r'\s*(?:(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)|(?P<string>"[^"]*")|(?P<punct>[(){}\[\],=]))'
)
_DURATION = re.compile(r"\s*(\d+)([smh])\s*\]")


@dataclass(frozen=True)
class Selector:
    name: str
    matchers: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Rate:
    selector: Selector
    window_s: float


@dataclass(frozen=True)
class Sum:
    by: tuple[str, ...] | None
    inner: Selector | Rate | Sum


Expr = Selector | Rate | Sum


class _Parser:
    def __init__(self, text: str) -> None:
        self.text, self.at = text, 0

    def peek(self) -> str:
        match = _TOKEN.match(self.text, self.at)
        return match.group(0).strip() if match else ""

    def take(self, expected: str | None = None) -> str:
        match = _TOKEN.match(self.text, self.at)
        if match is None:
            raise ValueError(f"cannot read {self.text[self.at :]!r} in {self.text!r}")
        token = match.group(0).strip()
        if expected is not None and token != expected:
            raise ValueError(f"expected {expected!r}, found {token!r} in {self.text!r}")
        self.at = match.end()
        return token

    def expr(self) -> Expr:
        word = self.take()
        if word == "sum":
            by = None
            if self.peek() == "by":
                self.take("by")
                by = self.names()
            self.take("(")
            inner = self.expr()
            self.take(")")
            return Sum(by, inner)
        if word == "rate":
            self.take("(")
            selector = self.selector(self.take())
            self.take("[")
            duration = _DURATION.match(self.text, self.at)
            if duration is None:
                raise ValueError(f"a range like [1m] expected in {self.text!r}")
            self.at = duration.end()
            self.take(")")
            scale = {"s": 1, "m": 60, "h": 3600}[duration.group(2)]
            return Rate(selector, float(duration.group(1)) * scale)
        return self.selector(word)

    def names(self) -> tuple[str, ...]:
        self.take("(")
        names = [self.take()]
        while self.peek() == ",":
            self.take(",")
            names.append(self.take())
        self.take(")")
        return tuple(names)

    def selector(self, name: str) -> Selector:
        if not re.fullmatch(r"[A-Za-z_:][A-Za-z0-9_:]*", name):
            raise ValueError(f"a metric name expected, found {name!r}")
        matchers = []
        if self.peek() == "{":
            self.take("{")
            while self.peek() != "}":
                label = self.take()
                self.take("=")
                matchers.append((label, self.take().strip('"')))
                if self.peek() == ",":
                    self.take(",")
            self.take("}")
        return Selector(name, tuple(matchers))


def parse(text: str) -> Expr:
    """The query ``text``, in the part of PromQL the dashboard uses; ValueError otherwise."""
    parser = _Parser(text)
    expr = parser.expr()
    if parser.text[parser.at :].strip():
        raise ValueError(f"unexpected {parser.text[parser.at :]!r} in {text!r}")
    return expr


def metric_names(text: str) -> set[str]:
    """The metric names the query ``text`` reads."""
    expr = parse(text)
    while not isinstance(expr, Selector):
        expr = expr.inner if isinstance(expr, Sum) else expr.selector
    return {expr.name}


def evaluate(expr: Expr, history: list[tuple[float, Scrape]], index: int) -> Vector:
    """``expr`` at the time of scrape ``index`` of ``history``."""
    if isinstance(expr, Selector):
        return _select(expr, history[index][1])
    if isinstance(expr, Rate):
        now, latest = history[index]
        start = index
        while start > 0 and now - history[start - 1][0] <= expr.window_s:
            start -= 1
        if start == index:
            return {}
        then, earliest = history[start]
        before = _select(expr.selector, earliest)
        return {
            labels: (value - before.get(labels, 0.0)) / (now - then)
            for labels, value in _select(expr.selector, latest).items()
        }
    grouped: Vector = {}
    for labels, value in evaluate(expr.inner, history, index).items():
        key: Labels = frozenset(
            (name, label) for name, label in labels if expr.by is not None and name in expr.by
        )
        grouped[key] = grouped.get(key, 0.0) + value
    return grouped


def _select(selector: Selector, scrape: Scrape) -> Vector:
    wanted = set(selector.matchers)
    return {
        labels: value
        for (name, labels), value in scrape.items()
        if name == selector.name and wanted <= labels
    }


def legend(template: str, labels: Labels) -> str:
    values = dict(labels)
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: values.get(m.group(1), ""), template)


# the workload, and the picture


def scrape(url: str) -> Scrape:
    """Every sample of ``url``/metrics, keyed by name and labels."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


# (start, transport, `gpupool run` options, what workload.py does, for how many seconds)
PHASES = [
    (2, "tcp", ["-n", "1", "--fraction", "0.5"], "copy", 20),
    (6, "shm", ["-n", "1", "--memory", "1GiB"], "ops", 25),
    (12, "tcp", ["-n", "2", "--fraction", "0.5", "--wait", "60"], "launch", 15),
    (14, "shm", ["-n", "1", "--fraction", "1", "--wait", "60"], "copy", 10),
    (20, "shm", ["-n", "1", "--fraction", "0.25", "--wait", "60"], "crash", 1),
]


def record(seconds: float = 50.0) -> list[tuple[float, Scrape]]:
    """Scrape a real pool every second while the phases of a workload run on it: programs
    on shares of the GPUs over tcp and shm, requests that wait for capacity, and one that
    crashes its worker."""
    import os
    import subprocess
    import tempfile
    import time

    from gpupool.scheduler.service import start_scheduler
    from gpupool.server.daemon import PoolMembership, start_daemon

    secret = b"dashboard-render-secret-0123456789"
    folder = tempfile.TemporaryDirectory(prefix="gpupool-dashboard-")
    scheduler = start_scheduler(
        "127.0.0.1:0",
        f"{folder.name}/pool.db",
        secret,
        heartbeat_s=0.5,
        metrics_listen="127.0.0.1:0",
    )
    daemon = start_daemon(
        backend="emu",
        emu_devices=2,
        emu_memory=2 << 30,
        membership=PoolMembership(scheduler.address, "node-a", secret),
        metrics_listen="127.0.0.1:0",
    )
    assert scheduler.metrics and daemon.metrics and daemon.registration
    daemon.registration.registered.wait(30)
    program = str(ROOT / "docs" / "dashboard" / "workload.py")
    history: list[tuple[float, Scrape]] = []
    waiting = list(PHASES)
    running: list[subprocess.Popen[bytes]] = []
    started = time.monotonic()
    try:
        while time.monotonic() - started < seconds:
            now = time.monotonic() - started
            while waiting and waiting[0][0] <= now:
                _, transport, options, kind, length = waiting.pop(0)
                command = [sys.executable, "-m", "gpupool.cli", "run", *options, "--"]
                env = dict(os.environ, GPUPOOL_SCHEDULER=scheduler.address)
                env["GPUPOOL_TRANSPORT"] = transport
                running.append(
                    subprocess.Popen(
                        [*command, sys.executable, program, kind, str(length)], env=env
                    )
                )
            both = {**scrape(scheduler.metrics.url), **scrape(daemon.metrics.url)}
            history.append((now, both))
            time.sleep(1.0)
    finally:
        for process in running:
            try:
                process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        daemon.stop()
        scheduler.stop()
        folder.cleanup()
    return history


def draw(dashboard: dict, history: list[tuple[float, Scrape]], picture: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in dashboard["panels"])
    unit_w, unit_h = 0.75, 0.42  # inches per grid column and row
    figure = plt.figure(figsize=(24 * unit_w, rows * unit_h), facecolor="#181b1f")
    times = [t for t, _ in history]
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        left, width = grid["x"] / 24, grid["w"] / 24
        bottom, height = 1 - (grid["y"] + grid["h"]) / rows, grid["h"] / rows
        axes = figure.add_axes((left + 0.03, bottom + 0.03, width - 0.04, height - 0.06))
        axes.set_facecolor("#111217")
        axes.set_title(panel["title"], color="#ccccdc", fontsize=10, loc="left")
        for side in axes.spines.values():
            side.set_color("#2c3235")
        axes.tick_params(colors="#8e8e8e", labelsize=7)
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "none")
        if panel["type"] == "stat":
            target = panel["targets"][0]
            vector = evaluate(parse(target["expr"]), history, len(history) - 1)
            value = sum(vector.values())
            axes.text(
                0.5,
                0.45,
                f"{value:g}",
                color="#73bf69",
                fontsize=26,
                ha="center",
                va="center",
                transform=axes.transAxes,
            )
            axes.set_xticks([])
            axes.set_yticks([])
            continue
        stacked = panel["fieldConfig"]["defaults"].get("custom", {}).get("stacking", {})
        series = []
        for target in panel["targets"]:
            expr = parse(target["expr"])
            values = [evaluate(expr, history, i) for i in range(len(history))]
            for labels in sorted({k for v in values for k in v}, key=sorted):
                ys = [v.get(labels, float("nan")) for v in values]
                if any(y for y in ys if y == y):  # series that stay 0 are left out
                    series.append((legend(target["legendFormat"], labels), ys))
        scale, suffix = _scale(unit, series)
        if stacked.get("mode") == "normal" and series:
            axes.stackplot(
                times,
                *[[y / scale if y == y else 0 for y in ys] for _, ys in series],
                labels=[name for name, _ in series],
                alpha=0.6,
            )
        else:
            for name, ys in series:
                axes.plot(times, [y / scale for y in ys], label=name, linewidth=1.4)
        axes.set_ylabel(suffix, color="#8e8e8e", fontsize=7)
        axes.set_xlabel("seconds", color="#8e8e8e", fontsize=7)
        if series:
            axes.legend(
                fontsize=6,
                loc="upper left",
                facecolor="#181b1f",
                labelcolor="#ccccdc",
                framealpha=0.6,
                ncols=2,
            )
    picture.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(picture, dpi=80, facecolor=figure.get_facecolor())


def _scale(unit: str, series: list[tuple[str, list[float]]]) -> tuple[float, str]:
    if unit in ("bytes", "Bps"):
        peak = max((y for _, ys in series for y in ys if y == y), default=0.0)
        for size, name in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
            if peak >= size:
                return float(size), name + ("/s" if unit == "Bps" else "")
        return 1.0, "B" + ("/s" if unit == "Bps" else "")
    return {"percentunit": (0.01, "%"), "ops": (1.0, "/s")}.get(unit, (1.0, ""))


def main() -> int:
    dashboard = json.loads(DASHBOARD.read_text())
    history = record()
    draw(dashboard, history, PICTURE)
    print(f"{PICTURE} from {len(history)} scrapes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
