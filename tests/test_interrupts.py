"""Ctrl-C during a call, on every transport: the call completes (its reply read, its payload
drained), the KeyboardInterrupt reaches the program, and the same arrays go on working."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

import gpupool
import gpupool.cupy as cp
from gpupool import runtime as rt
from gpupool.client import interrupts
from gpupool.errors import ConnectionLost
from gpupool.server.daemon import Daemon

BIG = 64 << 20  # int32s: a 256 MiB copy
MEDIUM = 2 << 20  # 8 MiB: long enough to be interrupted in


def interrupt_during_a_call(times: int = 1, after: float = 0.05) -> threading.Thread:
    """SIGINT to this process once the main thread is inside a call (``times`` of them, a
    little apart), from a timer thread as a terminal or Jupyter sends it."""

    def fire() -> None:
        deadline = time.monotonic() + 30
        while not interrupts.in_call() and time.monotonic() < deadline:
            time.sleep(0.001)
        for _ in range(times):
            time.sleep(after)
            os.kill(os.getpid(), signal.SIGINT)

    thread = threading.Thread(target=fire, daemon=True)
    thread.start()
    return thread


@pytest.fixture
def big(connected: Daemon) -> Iterator[cp.ndarray]:
    x = cp.arange(BIG, dtype=cp.int32)
    yield x


def test_an_interrupted_large_get_completes_then_raises(big: cp.ndarray) -> None:
    timer = interrupt_during_a_call()
    with pytest.raises(KeyboardInterrupt) as raised:
        big.get()
    timer.join()
    assert not isinstance(raised.value, interrupts.Abandoned)
    tail = big[-4:].get()  # the same array, over the same session
    assert tail.tolist() == [BIG - 4, BIG - 3, BIG - 2, BIG - 1]
    assert float((big * 2)[:1000].sum()) == 999000.0


def test_interrupted_upload_sync_and_compile_leave_the_session_whole(connected: Daemon) -> None:
    big = cp.zeros(MEDIUM, dtype=cp.float32)
    data = np.full(MEDIUM, 3, np.float32)
    timer = interrupt_during_a_call(after=0.0)
    with pytest.raises(KeyboardInterrupt):
        big.set(data)  # host to device
    timer.join()
    assert float(big[-1]) == 3.0  # it completed
    source = f'extern "C" __global__ void k{os.getpid()}_{id(big)}(float* x) {{ x[0] = 7; }}'
    timer = interrupt_during_a_call(after=0.2)  # the compile takes the host compiler's time
    with pytest.raises(KeyboardInterrupt):
        kernel = cp.RawKernel(source, f"k{os.getpid()}_{id(big)}")
        kernel((1,), (1,), (big,))
        rt.deviceSynchronize()
    timer.join()
    kernel = cp.RawKernel(source, f"k{os.getpid()}_{id(big)}")  # compiled before: cached
    kernel((1,), (1,), (big,))
    assert float(big[0]) == 7.0 and float(big[1]) == 3.0


def test_a_second_interrupt_abandons_only_that_session(connected: Daemon) -> None:
    x = cp.arange(MEDIUM, dtype=cp.float32)
    timer = interrupt_during_a_call(times=2, after=0.02)
    with pytest.raises(KeyboardInterrupt):
        while True:  # until the two land in one call
            x.get()
    timer.join()
    try:
        x.get()
    except ConnectionLost as exc:  # both landed in one call: that session was given up
        assert "interrupted twice" in str(exc)
        gpupool.disconnect()
        gpupool.connect(connected.address)
    assert float(cp.ones(4).sum()) == 4.0  # a new session works either way
