"""How the ranks of a communicator find each other: a small TCP rendezvous, as NCCL's bootstrap.

A unique id (``cupy.cuda.nccl.get_unique_id``) is 128 bytes naming a rendezvous server that
the process asking for it starts (``host:port``) and a random nonce. Every rank connects and
sends what the others need to reach its worker (its daemon, endpoints, session key and grant);
once all ``ranks`` have, each gets the whole table and the server ends. Each message is one
length-prefixed JSON document, bounded in size; every wait has a deadline.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import struct
import threading
import time
from typing import Any

from gpupool.errors import GpupoolError

ID_BYTES = 128
ENV_HOST = "GPUPOOL_BOOTSTRAP_HOST"  # the address other hosts' ranks reach this process at
TIMEOUT_S = 120.0
MAX_MESSAGE = 1 << 20
_LENGTH = struct.Struct("<I")


def unique_id(host: str | None = None, port: int = 0, nonce: str | None = None) -> tuple[int, ...]:
    """A new id, and its rendezvous listening on ``host:port`` (port 0: any) in a thread."""
    server = _Server(host or os.environ.get(ENV_HOST, "127.0.0.1"), port, nonce)
    return encode(server.host, server.port, server.nonce)


def encode(host: str, port: int, nonce: str) -> tuple[int, ...]:
    text = f"gpupool1 {host} {port} {nonce}".encode()
    if len(text) > ID_BYTES:
        raise GpupoolError(f"rendezvous host {host!r} is too long for a unique id")
    raw = text.ljust(ID_BYTES, b"\0")
    return tuple(byte - 256 if byte > 127 else byte for byte in raw)  # signed chars, as CuPy


def decode(uid: Any) -> tuple[str, int, str]:
    """(host, port, nonce) of an id (a tuple of 128 ints, or bytes)."""
    try:
        raw = bytes(value & 0xFF for value in uid)
        magic, host, port, nonce = raw.rstrip(b"\0").decode().split(" ")
        if magic != "gpupool1":
            raise ValueError(magic)
        return host, int(port), nonce
    except (TypeError, ValueError) as exc:
        raise GpupoolError(f"not a gpupool unique id: {exc}") from None


def exchange(uid: Any, rank: int, ranks: int, entry: dict[str, Any]) -> list[dict[str, Any]]:
    """Publish this rank's ``entry`` and return every rank's, in rank order."""
    host, port, nonce = decode(uid)
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        try:
            sock = socket.create_connection((host, port), timeout=10)
            break
        except OSError as exc:  # rank 0's process may not listen yet (init_process_group)
            if time.monotonic() > deadline:
                raise GpupoolError(f"no rendezvous at {host}:{port}: {exc}") from exc
            time.sleep(0.05)
    with sock:
        sock.settimeout(TIMEOUT_S)
        _send(sock, {"nonce": nonce, "rank": rank, "ranks": ranks, "entry": entry})
        answer = _receive(sock)
    if "error" in answer:
        raise GpupoolError(f"rendezvous refused rank {rank}: {answer['error']}")
    table: list[dict[str, Any]] = answer["table"]
    return table


class _Server:
    """One communicator's rendezvous: collects ``ranks`` entries, answers all, ends."""

    def __init__(self, host: str, port: int, nonce: str | None) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener = socket.socket(family, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((host, port))
        self._listener.listen(64)
        self.host = host
        self.port = self._listener.getsockname()[1]
        self.nonce = nonce or secrets.token_hex(16)
        threading.Thread(target=self._serve, name="rendezvous", daemon=True).start()

    def _serve(self) -> None:
        joined: dict[int, tuple[socket.socket, dict[str, Any]]] = {}
        ranks: int | None = None
        deadline = time.monotonic() + TIMEOUT_S
        try:
            while ranks is None or len(joined) < ranks:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self._listener.settimeout(left)
                try:
                    sock, _ = self._listener.accept()
                except OSError:
                    return
                sock.settimeout(10)
                try:
                    hello = _receive(sock)
                    rank, count = int(hello["rank"]), int(hello["ranks"])
                    problem = None
                    if hello.get("nonce") != self.nonce:
                        problem = "a different unique id"
                    elif not 0 <= rank < count or (ranks is not None and count != ranks):
                        problem = f"rank {rank} of {count}"
                    elif rank in joined:
                        problem = f"rank {rank} joined twice"
                    if problem:
                        _send(sock, {"error": problem})
                        sock.close()
                        continue
                except (OSError, ValueError, KeyError, TypeError):
                    sock.close()
                    continue
                ranks = count
                joined[rank] = (sock, hello["entry"])
            table = [joined[rank][1] for rank in range(ranks)]
            for sock, _entry in joined.values():
                try:
                    _send(sock, {"table": table})
                except OSError:
                    pass
        finally:
            for sock, _entry in joined.values():
                sock.close()
            self._listener.close()


def _send(sock: socket.socket, document: dict[str, Any]) -> None:
    data = json.dumps(document).encode()
    sock.sendall(_LENGTH.pack(len(data)) + data)


def _receive(sock: socket.socket) -> dict[str, Any]:
    (length,) = _LENGTH.unpack(_exactly(sock, _LENGTH.size))
    if length > MAX_MESSAGE:
        raise ValueError(f"a {length}-byte rendezvous message")
    document = json.loads(_exactly(sock, length))
    if not isinstance(document, dict):
        raise ValueError("not a JSON object")
    return document


def _exactly(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the rendezvous peer closed the connection")
        data += chunk
    return bytes(data)
