"""The raw-socket baseline: the same loopback link with nothing of gpupool on it.

A peer process (``python -m gpupool.bench.rawlink``) receives or sends a requested number of
bytes on each connection, from and into a buffer it reuses, as a daemon's worker would
without any protocol. The client side moves them over one connection, or split over several
in parallel (what ``tcp://`` striping does), so the remote figures can be read as a share of
what the link itself carries. For ``shm://`` the link is memory (one memcpy) for bulk bytes
and a Unix socket for messages: the peer serves one too, for the round-trip baseline.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from gpupool.transport.frames import receive_exactly
from gpupool.transport.payload import split

REQUEST = struct.Struct("<cQ")  # b"s": the client sends SIZE bytes; b"r": it receives them
BUFFER = 64 << 20


def _serve_connection(conn: socket.socket) -> None:
    buffer = memoryview(bytearray(BUFFER))
    header = memoryview(bytearray(REQUEST.size))
    with conn:
        if conn.family != socket.AF_UNIX:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while True:
            try:
                receive_exactly(conn, header)
            except Exception:
                return
            direction, size = REQUEST.unpack(header)
            for offset in range(0, size, BUFFER):
                piece = buffer[: min(BUFFER, size - offset)]
                if direction == b"s":
                    receive_exactly(conn, piece)
                else:
                    conn.sendall(piece)
            if direction == b"s":
                conn.sendall(b"k")  # all of it arrived


def serve() -> None:
    """The peer: print the TCP port and the Unix socket's path, serve until stdin closes."""
    with tempfile.TemporaryDirectory(prefix="gpupool-rawlink-") as folder:
        listeners = [socket.create_server(("127.0.0.1", 0)), socket.socket(socket.AF_UNIX)]
        path = os.path.join(folder, "peer")
        listeners[1].bind(path)
        listeners[1].listen()
        print(listeners[0].getsockname()[1], path, flush=True)

        def accept(listener: socket.socket) -> None:
            while True:
                conn, _ = listener.accept()
                threading.Thread(target=_serve_connection, args=(conn,), daemon=True).start()

        for listener in listeners:
            threading.Thread(target=accept, args=(listener,), daemon=True).start()
        sys.stdin.read()


class RawLink:
    """Client side of the baseline: a peer process and ``stripes`` connections to it."""

    def __init__(self, stripes: int) -> None:
        self._peer = subprocess.Popen(
            [sys.executable, "-m", "gpupool.bench.rawlink"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._peer.stdout is not None
        port, path = self._peer.stdout.readline().split()
        self._sockets = [socket.create_connection(("127.0.0.1", int(port))) for _ in range(stripes)]
        for sock in self._sockets:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._unix = socket.socket(socket.AF_UNIX)
        self._unix.connect(path)
        self._pool = ThreadPoolExecutor(stripes)
        self._tiny = memoryview(bytearray(4))

    def round_trip(self, unix: bool = False) -> float:
        """Seconds for 4 bytes asked of the peer to arrive (on TCP, or on the Unix socket)."""
        sock = self._unix if unix else self._sockets[0]
        start = time.perf_counter()
        self._receive_share(sock, self._tiny)
        return time.perf_counter() - start

    def send(self, data: memoryview, stripes: int) -> float:
        """Seconds to move ``data`` to the peer over ``stripes`` connections."""
        return self._timed(data, stripes, self._send_share)

    def receive(self, target: memoryview, stripes: int) -> float:
        """Seconds to move ``len(target)`` bytes from the peer into ``target``."""
        return self._timed(target, stripes, self._receive_share)

    def close(self) -> None:
        for sock in [*self._sockets, self._unix]:
            sock.close()
        self._pool.shutdown()
        if self._peer.stdin is not None:
            self._peer.stdin.close()
        self._peer.wait(5)
        if self._peer.stdout is not None:
            self._peer.stdout.close()

    def _timed(
        self, buffer: memoryview, stripes: int, move: Callable[[socket.socket, memoryview], None]
    ) -> float:
        shares = split(len(buffer), stripes)
        start = time.perf_counter()
        futures = [
            self._pool.submit(move, sock, buffer[offset : offset + n])
            for sock, (offset, n) in zip(self._sockets, shares, strict=False)
        ]
        for future in futures:
            future.result()
        return time.perf_counter() - start

    @staticmethod
    def _send_share(sock: socket.socket, share: memoryview) -> None:
        sock.sendall(REQUEST.pack(b"s", len(share)))
        sock.sendall(share)
        receive_exactly(sock, memoryview(bytearray(1)))

    @staticmethod
    def _receive_share(sock: socket.socket, share: memoryview) -> None:
        sock.sendall(REQUEST.pack(b"r", len(share)))
        receive_exactly(sock, share)


def memcpy_seconds(target: np.ndarray, source: np.ndarray) -> float:
    """One host memory copy: the link of ``shm://``."""
    start = time.perf_counter()
    np.copyto(target, source)
    return time.perf_counter() - start


if __name__ == "__main__":
    serve()
