"""``gpupool bench`` as a user runs it, with small sizes: every record, well formed."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from gpupool.bench.runner import COPIES, Record, _with_ratios


def test_bench_all_writes_every_record_for_every_transport(tmp_path: Path) -> None:
    out, picture = tmp_path / "out.json", tmp_path / "curves.png"
    result = subprocess.run(
        [
            *(sys.executable, "-m", "gpupool.cli", "bench", "all"),
            *("--sizes", "4KiB,5MiB", "--stripes", "2", "--ops", "64"),
            *("--json", str(out), "--plot", str(picture), "--emu-devices", "1"),
        ],
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "H2D bandwidth" in result.stdout and "round trip" in result.stdout
    records = json.loads(out.read_text())["records"]
    transports = ("grpc", "tcp", "tcp-x1", "shm")  # tcp-x1: tcp:// on one connection
    index = {(r["op"], r["transport"], r["size_bytes"]): r for r in records}
    for size in (4 << 10, 5 << 20):
        for op in COPIES:
            for name in ("native", *transports):
                record = index[(op, name, size)]
                assert record["gbps"] > 0 and record["native"] == (name == "native")
                assert name == "native" or record["ratio"] > 0
        for op in ("h2d", "d2h"):
            for name in ("raw-tcp", "raw-tcp-x2", "raw-shm"):
                assert index[(op, name, size)]["gbps"] > 0
            for name in transports:
                assert index[(op, name, size)]["link_ratio"] > 0
            pinned = index[(op, "shm-pinned", size)]  # from the shim's pinned memory
            assert pinned["gbps"] > 0 and pinned["ratio"] > 0 and "link_ratio" not in pinned
    for name in ("raw-tcp", "raw-shm"):  # a ping-pong on the bare socket
        assert index[("latency", name, 4)]["us"] > 0
    for name in transports:
        assert index[("latency", name, 4)]["link_ratio"] > 0
    for name in ("native", *transports):
        assert index[("latency", name, 4)]["us"] > 0
        launch = index[("launch", name, 0)]
        assert launch["per_s"] > 0 and abs(launch["us"] * launch["per_s"] - 1e6) < 1
    assert all(set(r) >= {"op", "transport", "size_bytes", "native"} for r in records)
    assert picture.read_bytes().startswith(b"\x89PNG")
    assert "Small array operations" in result.stdout
    for loop in ("elementwise", "in-place", "reduce", "mlp-step"):
        assert index[(f"ops-{loop}", "native", 1024)]["us"] > 0
        for name in ("grpc", "tcp", "shm"):
            small = index[(f"ops-{loop}", name, 1024)]
            assert small["us"] > 0 and small["client_us"] > 0 and small["ratio"] > 0
            assert small["worker_us"] >= 0  # the local daemon's processes, from /proc
            assert small["round_trips"] == 0 and small["mallocs"] == 0  # only the closing wait


def test_shm_is_read_against_native_pageable_and_pinned_shm_against_native_pinned() -> None:
    def records(*figures: tuple[str, float]) -> dict[str, Record]:
        made = [
            Record("h2d", name, 1, name.startswith("native"), gbps=gbps) for name, gbps in figures
        ]
        return {record.transport: record for record in _with_ratios(made)}

    gpu = records(
        ("native", 50.0), ("native-pageable", 10.0), ("raw-shm", 20.0),
        ("shm", 12.0), ("shm-pinned", 45.0), ("tcp", 5.0),
    )  # fmt: skip
    assert gpu["shm"].ratio == pytest.approx(1.2) and gpu["shm"].link_ratio == pytest.approx(0.6)
    assert gpu["shm-pinned"].ratio == pytest.approx(0.9) and gpu["shm-pinned"].link_ratio is None
    assert gpu["tcp"].ratio == pytest.approx(0.1)
    emulator = records(("native", 10.0), ("shm", 5.0), ("shm-pinned", 8.0))  # one native
    assert emulator["shm"].ratio == pytest.approx(0.5)
    assert emulator["shm-pinned"].ratio == pytest.approx(0.8)


def test_bench_refuses_a_transport_it_does_not_have() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gpupool.cli", "bench", "latency", "--transport", "pigeon"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "not available here: pigeon" in result.stdout


def test_bench_names_bad_arguments_before_running() -> None:
    """A plot it cannot draw, a stripe count the daemon refuses, a daemon it cannot reach: said
    at once in a line, not a traceback after (or in the middle of) the measurements."""
    bench = [sys.executable, "-m", "gpupool.cli", "bench", "latency"]
    for extra, said in (
        (["--plot", "curves.txt"], "'curves.txt': name a picture file (.avif,"),
        (["--stripes", "0"], "a number of connections, 1 to 16: '0'"),
        (["--stripes", "17"], "a number of connections, 1 to 16: '17'"),
    ):
        result = subprocess.run([*bench, *extra], capture_output=True, text=True, timeout=60)
        assert result.returncode == 2 and said in result.stderr, result.stderr
    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        nobody = f"127.0.0.1:{closed.getsockname()[1]}"
        result = subprocess.run(
            [*bench, "--daemons", nobody], capture_output=True, text=True, timeout=60
        )
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith(f"gpupool bench: cannot reach daemon {nobody}")
    assert "Traceback" not in result.stderr


def test_bench_peer_and_collective_read_against_the_raw_link(tmp_path: Path) -> None:
    """Two local daemon processes of two devices: cross- and same-daemon peer copies, and a
    4-rank all-reduce with its bus bandwidth (nccl-tests: algbw x 2(N-1)/N)."""
    for what in ("peer", "collective"):
        out = tmp_path / f"{what}.json"
        result = subprocess.run(
            [
                *(sys.executable, "-m", "gpupool.cli", "bench", what, "--sizes", "1MiB"),
                *("--json", str(out), "--plot", str(tmp_path / f"{what}.png")),
                *("--emu-devices", "2", "--emu-memory", "1GiB", "--stripes", "2"),
            ],
            capture_output=True,
            text=True,
            timeout=150,
            env={**os.environ, "GPUPOOL_EMU_CONFINE": "0"},  # workers dial their peer links
        )
        assert result.returncode == 0, result.stdout + result.stderr
        index = {
            (r["transport"], r["size_bytes"]): r for r in json.loads(out.read_text())["records"]
        }
        for size in (1 << 20,):
            if what == "peer":
                for name in ("cross-daemon", "same-daemon"):
                    record = index[(name, size)]
                    assert record["gbps"] > 0 and record["ratio"] > 0 and record["link_ratio"] > 0
                assert index[("raw-tcp", size)]["gbps"] > 0 and index[("native", size)]["native"]
            else:
                algbw, busbw = index[("ring-4 algbw", size)], index[("ring-4 busbw", size)]
                assert abs(busbw["gbps"] - algbw["gbps"] * 2 * 3 / 4) < 1e-9 * busbw["gbps"] + 1e-12
                assert busbw["link_ratio"] > 0
