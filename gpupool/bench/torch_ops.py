"""Client CPU per queued small ATen operation, and round trips per training step.

    python -m gpupool.bench.torch_ops [--daemons HOST:PORT]   # an embedded emulator by default

Measured side by side in one run, in turns: the same small operations on CPU tensors
(PyTorch's own dispatch, the floor) and on ``gpupool`` tensors, queued without a
synchronization (the queue is flushed, untimed, between repetitions). The figure for the
target is the client's CPU time per queued operation (``time.process_time``, this thread's
process only: the daemon runs elsewhere). Then the training step of the MLP example, with
and without reading the loss, counted in round trips (``gpupool.stats()``).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

import gpupool
import gpupool.torch as gt
from gpupool.server.daemon import start_daemon

OPS = 2000
REPEATS = 7


def _per_op(run: Callable[[], None], flush: Callable[[], None]) -> float:
    """Client CPU seconds per operation of ``run`` (OPS operations), the median of REPEATS."""
    samples = []
    for _ in range(REPEATS):
        flush()
        start = time.process_time()
        run()
        samples.append((time.process_time() - start) / OPS)
    return statistics.median(samples)


def _loops(a: torch.Tensor, b: torch.Tensor) -> dict[str, Callable[[], None]]:
    def add() -> None:
        for _ in range(OPS):
            a + b

    def inplace() -> None:
        for _ in range(OPS):
            a.add_(b, alpha=0.0)

    def view_then_op() -> None:
        for _ in range(OPS // 2):
            a.t().mul(2.0)

    return {
        "a + b (new output)": add,
        "a.add_(b) (in place)": inplace,
        "a.t().mul(2)": view_then_op,
    }


def _step_round_trips(read_loss: bool) -> int:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 1)).to("gpupool")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = torch.randn(64, 32).to("gpupool"), torch.randn(64, 1).to("gpupool")
    counts = []
    for _ in range(4):
        before = gpupool.stats().round_trips
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        if read_loss:
            loss.item()
        counts.append(gpupool.stats().round_trips - before)
    gt.synchronize()
    return max(counts[1:])  # the first step makes the plans and fills the memory pool


def _step_seconds(device: str) -> float:
    """Wall seconds a step of the bench's MLP takes, loss read each step (median of 10)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 1)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = torch.randn(64, 32).to(device), torch.randn(64, 1).to(device)
    samples = []
    for _ in range(12):
        start = time.perf_counter()
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        loss.item()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples[2:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--daemons", help="HOST:PORT of daemons (default: an embedded emulator)")
    args = parser.parse_args()
    daemon = None if args.daemons else start_daemon(backend="emu", emu_devices=1)
    try:
        gpupool.connect(args.daemons or daemon.address)  # type: ignore[union-attr]
        cpu = _loops(torch.ones(4, 4), torch.ones(4, 4))
        pool = _loops(torch.ones(4, 4, device="gpupool"), torch.ones(4, 4, device="gpupool"))
        for loops in (cpu, pool):  # warm: plans made, blocks in the pool
            for loop in loops.values():
                loop()
        gt.synchronize()
        print(f"client CPU per operation ({OPS} ops, median of {REPEATS}; 4x4 float32)")
        print(f"{'operation':24} {'CPU tensors':>12} {'gpupool':>12} {'ratio':>7}")
        for name in cpu:
            native = pool_time = 0.0
            natives, pools = [], []
            for _ in range(3):  # in turns, so that load on the machine hits both alike
                natives.append(_per_op(cpu[name], lambda: None))
                pools.append(_per_op(pool[name], gt.synchronize))
            native, pool_time = min(natives), min(pools)
            print(
                f"{name:24} {native * 1e6:10.1f}us {pool_time * 1e6:10.1f}us"
                f" {pool_time / native:6.1f}x"
            )
        gt.synchronize()
        print(f"round trips per MLP step, loss read: {_step_round_trips(True)}")
        print(f"round trips per MLP step, loss not read: {_step_round_trips(False)}")
        cpu_step, pool_step = _step_seconds("cpu"), _step_seconds("gpupool")
        print(
            f"MLP step, loss read: CPU {cpu_step * 1e3:.2f} ms, gpupool {pool_step * 1e3:.2f} ms"
            f" ({pool_step / cpu_step:.1f}x)"
        )
    finally:
        gpupool.disconnect()
        if daemon is not None:
            daemon.stop()


if __name__ == "__main__":
    main()
