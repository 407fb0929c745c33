"""Ctrl-C during a call, on every transport: the call completes (its reply read, its payload
drained), the KeyboardInterrupt reaches the program, and the same arrays go on working."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest

import gpupool
import gpupool.cupy as cp
from gpupool import runtime as rt
from gpupool.client import context, interrupts
from gpupool.errors import ConnectionLost
from gpupool.proto import gpupool_pb2 as pb
from gpupool.server.daemon import Daemon

BIG = 64 << 20  # int32s: a 256 MiB copy
MEDIUM = 2 << 20  # 8 MiB: long enough to be interrupted in


def interrupt_during_a_call(after: float = 0.05) -> threading.Thread:
    """SIGINT to this process ``after`` seconds into the main thread's next call, from a
    timer thread, as a terminal or Jupyter sends it."""

    def fire() -> None:
        deadline = time.monotonic() + 30
        while not interrupts.in_call() and time.monotonic() < deadline:
            time.sleep(0.001)
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


@contextmanager
def interrupted_while_waiting(times: int = 1) -> Iterator[None]:
    """SIGINT (``times`` of them) sent to this process as the next call starts waiting for
    its reply: the signal lands inside that call, whatever its length."""
    session = context.current().session()
    link = session._link
    receive = link.receive
    sent = []

    def signalling() -> pb.Reply:
        if not sent:
            sent.append(True)
            for _ in range(times):
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.01)  # each is delivered before the next
        return receive()

    link.receive = signalling  # type: ignore[method-assign]
    try:
        yield
    finally:
        del link.receive
    assert sent, "no call waited"


def test_copy_sync_malloc_and_compile_interrupted_leave_the_session_whole(
    connected: Daemon,
) -> None:
    x = cp.zeros(MEDIUM, dtype=cp.float32)
    data = np.full(MEDIUM, 3, np.float32)
    with pytest.raises(KeyboardInterrupt), interrupted_while_waiting():
        rt.memcpy(x.data.ptr, data.ctypes.data, data.nbytes, rt.memcpyHostToDevice)
    assert float(x[-1]) == 3.0  # the copy completed
    with pytest.raises(KeyboardInterrupt), interrupted_while_waiting():
        rt.deviceSynchronize()
    with pytest.raises(KeyboardInterrupt), interrupted_while_waiting():
        rt.malloc(1 << 20)  # allocated, its pointer lost with the call: freed at the session's end
    name = f"k{os.getpid()}_{id(x)}"
    source = f'extern "C" __global__ void {name}(float* x) {{ x[0] = 7; }}'
    with pytest.raises(KeyboardInterrupt), interrupted_while_waiting():
        cp.RawKernel(source, name)((1,), (1,), (x,))  # compiled on first use
    cp.RawKernel(source, name)((1,), (1,), (x,))  # compiled before: the daemon's cache
    assert float(x[0]) == 7.0 and float(x[1]) == 3.0


def test_a_second_interrupt_abandons_only_that_session(connected: Daemon) -> None:
    x = cp.arange(MEDIUM, dtype=cp.float32)
    with pytest.raises(interrupts.Abandoned), interrupted_while_waiting(times=2):
        x.get()
    with pytest.raises(ConnectionLost, match="interrupted twice"):
        x.get()  # that session was given up
    gpupool.disconnect()
    gpupool.connect(connected.address)
    assert float(cp.ones(4).sum()) == 4.0  # a new one works
