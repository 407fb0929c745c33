"""A real Jupyter kernel (jupyter_client driving ipykernel) using the pool from its cells:
``%load_ext gpupool``, attach, compute, attach more, detach, attach again, and an interrupt
(the kernel's SIGINT) during a large transfer that leaves the kernel and its arrays usable."""

from __future__ import annotations

import os
import queue
import time
from collections.abc import Iterator
from typing import Any

import pytest

from gpupool.scheduler.service import Scheduler
from tests.test_attach import pool, secret_env  # noqa: F401  (fixtures)

jupyter_client = pytest.importorskip("jupyter_client")
pytest.importorskip("ipykernel")

CELL_TIMEOUT_S = 60.0


class Kernel:
    """One kernel and its client; :meth:`run` executes a cell and collects what it said."""

    def __init__(self, env: dict[str, str]) -> None:
        self.manager = jupyter_client.KernelManager(kernel_name="python3")
        self.manager.start_kernel(env=env)
        self.client = self.manager.client()
        self.client.start_channels()
        self.client.wait_for_ready(timeout=60)

    def start(self, code: str) -> str:
        return str(self.client.execute(code))

    def finish(self, msg_id: str) -> tuple[str, dict[str, Any]]:
        """The cell's output text and its reply's content."""
        text = []
        deadline = time.monotonic() + CELL_TIMEOUT_S
        while True:
            try:
                message = self.client.get_iopub_msg(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no end of cell within {CELL_TIMEOUT_S} s") from None
            if message["parent_header"].get("msg_id") != msg_id:
                continue
            kind, content = message["msg_type"], message["content"]
            if kind == "stream":
                text.append(content["text"])
            elif kind in ("execute_result", "display_data"):
                text.append(content["data"].get("text/plain", ""))
            elif kind == "error":
                text.append("\n".join(content["traceback"]))
            elif kind == "status" and content["execution_state"] == "idle":
                break
        while True:  # its reply (replies to earlier requests, kernel_info's, are skipped)
            reply = self.client.get_shell_msg(timeout=CELL_TIMEOUT_S)
            if reply["parent_header"].get("msg_id") == msg_id:
                return "".join(text), reply["content"]

    def run(self, code: str) -> str:
        out, reply = self.finish(self.start(code))
        assert reply["status"] == "ok", out
        return out

    def stop(self) -> None:
        self.client.stop_channels()
        self.manager.shutdown_kernel(now=True)


@pytest.fixture
def kernel(pool: Scheduler) -> Iterator[Kernel]:  # noqa: F811
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUPOOL_")}
    env.update(
        GPUPOOL_SCHEDULER=pool.address,
        GPUPOOL_CACHE_DIR=os.environ.get("GPUPOOL_CACHE_DIR", ""),
        GPUPOOL_TRANSPORT="shm",
    )
    started = Kernel(env)
    yield started
    started.stop()


def test_cells_attach_compute_detach_and_survive_an_interrupt(kernel: Kernel) -> None:
    kernel.run("%load_ext gpupool\nimport gpupool\ngpupool.install_cupy()\nimport cupy as cp")
    out = kernel.run("%gpupool attach -n 1")
    assert out.startswith("device 0: ") and "share 1" in out, out
    kernel.run("a = cp.arange(64 << 20, dtype=cp.float32)")  # 256 MiB on device 0
    out = kernel.run("%gpupool attach -n 2 --fraction 0.5")
    assert "device 1: " in out and "device 2: " in out and "share 0.5" in out, out
    out = kernel.run(
        "sums = []\n"
        "for d in (1, 2):\n"
        "    with cp.cuda.Device(d):\n"
        "        sums.append(float((cp.asarray(a[:1000].get()) * 2).sum()))\n"
        "print(sums, float(a[:1000].sum()))"
    )
    assert out.strip() == "[999000.0, 999000.0] 499500.0", out
    out = kernel.run("%gpupool devices")
    assert [line.split(":")[0] for line in out.splitlines()] == ["device 0", "device 1", "device 2"]

    # an interrupt while 256 MiB copies run: the copy in flight finishes, then the cell stops
    msg_id = kernel.start("for _ in range(1000):\n    host = a.get()")
    time.sleep(2.0)
    kernel.manager.interrupt_kernel()
    out, reply = kernel.finish(msg_id)
    assert reply["status"] == "error" and reply["ename"] == "KeyboardInterrupt", out
    assert "interrupts.py" in out, out  # raised as the held call returned, not inside it
    out = kernel.run("print(float(a[-1]), float(a[:1000].sum()), a.get()[12345])")
    assert out.split() == ["67108864.0", "499500.0", "12345.0"], out

    out = kernel.run("%gpupool detach 0")
    assert out.strip() == "detached [0]", out
    out = kernel.run("%gpupool devices")
    assert [line.split(":")[0] for line in out.splitlines()] == ["device 1", "device 2"]
    out = kernel.run("%gpupool attach -n 1 --memory 1GiB")
    assert out.startswith("device 3: ") and "1024 MiB" in out, out
    out = kernel.run("with cp.cuda.Device(3):\n    print(float(cp.ones(5).sum()))")
    assert out.strip() == "5.0"
    out = kernel.run("%gpupool smi")
    assert "GPUs" in out and "leases" in out, out
    out = kernel.run("%gpupool detach")
    assert out.strip() == "detached [1, 2, 3]", out
    out, reply = kernel.finish(kernel.start("%gpupool attach -n 9"))
    assert reply["status"] == "error" and "can never fit" in out, out
    assert "Traceback" not in out
