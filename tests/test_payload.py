"""Payload paths on their own, over socketpairs: stripes and the shared-memory ring.

The staged sources and sinks here stand in for a GPU's device memory, which the host cannot
address: they force the pipelined staging path that the CuPy backend takes, so its logic is
checked on a machine without a GPU.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable

import numpy as np
import pytest

from gpupool.transport import memcopy
from gpupool.transport.frames import FrameSocket
from gpupool.transport.payload import STAGE, BufferSink, BufferSource, Ring, Stripes


class StagedSource:
    """Readable only by copying out, like device memory."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def direct(self, offset: int, size: int) -> memoryview | None:
        return None

    def copy_into(self, offset: int, target: memoryview) -> None:
        target[:] = self.data[offset : offset + len(target)]


class StagedSink:
    """Writable only by copying in, like device memory; remembers the pieces it got."""

    def __init__(self, size: int) -> None:
        self.data = bytearray(size)
        self.pieces: list[tuple[int, int]] = []
        self._lock = threading.Lock()

    def target(self, offset: int, size: int) -> memoryview | None:
        return None

    def write(self, offset: int, data: memoryview) -> None:
        self.data[offset : offset + len(data)] = data
        with self._lock:
            self.pieces.append((offset, len(data)))


def _both_ends(count: int) -> tuple[Stripes, Stripes, list[socket.socket]]:
    pairs = [socket.socketpair() for _ in range(count)]
    left = Stripes(FrameSocket(pairs[0][0]), count)
    right = Stripes(FrameSocket(pairs[0][1]), count)
    for index, (a, b) in enumerate(pairs[1:], start=1):
        left.attach(index, a)
        right.attach(index, b)
    return left, right, [sock for pair in pairs for sock in pair]


def _transfer(send: Callable[[], None], receive: Callable[[], None]) -> None:
    sender = threading.Thread(target=send)
    sender.start()
    receive()
    sender.join(30)
    assert not sender.is_alive()


@pytest.mark.parametrize("count", [1, 3])
def test_staged_pieces_arrive_whole_over_stripes(count: int) -> None:
    size = 3 * STAGE + 12345  # several staged pieces per stripe, the last one short
    data = np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes()
    left, right, sockets = _both_ends(count)
    sink = StagedSink(size)
    _transfer(lambda: left.send(size, StagedSource(data)), lambda: right.receive(size, sink))
    assert sink.data == data
    assert len(sink.pieces) == len(set(sink.pieces))  # each piece written once
    assert sum(n for _, n in sink.pieces) == size
    back = bytearray(size)  # and the other way, from staged to the host's own buffer
    _transfer(
        lambda: right.send(size, BufferSource(memoryview(bytes(sink.data)))),
        lambda: left.receive(size, BufferSink(memoryview(back))),
    )
    assert back == data
    for end in (left, right):
        end.close()
    for sock in sockets:
        sock.close()


def test_the_ring_carries_payloads_larger_than_itself_both_ways() -> None:
    a, b = socket.socketpair()
    ring, fd = Ring.create(FrameSocket(a), slot_size=1 << 16)
    peer = Ring.attach(FrameSocket(b), os.dup(fd))
    os.close(fd)
    size = 17 * (1 << 16) + 3  # more than four slots: the ring wraps and waits for slots back
    data = np.random.default_rng(1).integers(0, 256, size, dtype=np.uint8).tobytes()
    sink = StagedSink(size)
    _transfer(lambda: ring.send(size, StagedSource(data)), lambda: peer.receive(size, sink))
    assert sink.data == data
    back = bytearray(size)
    _transfer(
        lambda: peer.send(size, BufferSource(memoryview(data))),
        lambda: ring.receive(size, BufferSink(memoryview(back))),
    )
    assert back == data
    ring.close()
    peer.close()
    a.close()
    b.close()


@pytest.mark.parametrize("size", [0, 1, memcopy.PART_MIN - 1, 2 * memcopy.PART_MIN + 3, 9 << 20])
def test_a_parallel_copy_moves_every_byte_once(size: int) -> None:
    source = np.random.default_rng(size).integers(0, 256, size + 2, dtype=np.uint8)
    target = np.zeros(size + 2, np.uint8)
    memcopy.copy(memoryview(target)[1 : size + 1], memoryview(source)[1 : size + 1])
    assert (target[1 : size + 1] == source[1 : size + 1]).all()
    assert target[0] == 0 and target[-1] == 0  # nothing outside the views


def test_a_parallel_copy_refuses_views_of_two_sizes() -> None:
    with pytest.raises(ValueError, match="copy of 3 bytes into 2"):
        memcopy.copy(memoryview(bytearray(2)), memoryview(b"abc"))
