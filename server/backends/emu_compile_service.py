"""The emulator's compile service: the one process that writes the kernel cache of confined
workers.

A confined worker may not run programs (its seccomp filter refuses execve), and it must not be
able to plant a module in a cache that another tenant's worker loads. So a daemon whose
workers are confined starts this service once: a fresh interpreter that binds a Unix socket,
then becomes the compiler's own user (``confinement.compiler_uid``, no other groups, no new
privileges, not dumpable) and compiles for every worker into a cache that this user alone may
write (mode 0755; workers read it and copy what they load into their own temporary files).
It answers only peers whose user is a worker's (or root), checked with ``SO_PEERCRED``, and it
ends when the daemon does (its standard input is a pipe from the daemon). The daemon does not
wait for it to start (that would add a second to every daemon's start): a worker's first
compile waits until the socket, renamed into place once it listens, answers.

The protocol is one JSON message each way per compile, framed as ``multiprocessing``'s
``Connection`` frames: ``{"source", "options"}`` in, ``{"path", "names"}`` or ``{"error",
"log"}`` out.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from multiprocessing.connection import Connection
from pathlib import Path

from gpupool.errors import CompileError
from gpupool.server import confinement, seccomp
from gpupool.server.backends import emu_kernels
from gpupool.server.includes import check_includes

log = logging.getLogger(__name__)

ENV_CACHE = "GPUPOOL_EMU_SHARED_CACHE"
DEFAULT_CACHE = "/var/cache/gpupool"
START_TIMEOUT_S = 60
MAX_REQUEST = 64 << 20  # the largest ModuleLoad a session can send is smaller
MAX_CONNECTIONS = 4096  # a worker holds one; more would be a tenant's kernel hoarding threads
# A compile waits at most the compiler's time limit and then some for the reply.
REPLY_TIMEOUT_S = emu_kernels.COMPILE_TIMEOUT_S + 60


def shared_cache() -> Path:
    """The cache folder of confined workers, made (or checked) to be the compiler user's alone:
    a real folder, owned by that user, writable by no one else."""
    base = Path(os.environ.get(ENV_CACHE) or DEFAULT_CACHE)
    uid = confinement.compiler_uid()
    base.mkdir(mode=0o755, parents=True, exist_ok=True)
    folder = base / f"emu-{uid}"
    try:
        folder.mkdir(mode=0o755)
        os.chown(folder, uid, uid)
    except FileExistsError:
        pass
    info = folder.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != uid or info.st_mode & 0o022:
        raise RuntimeError(
            f"{folder} must be a folder of user {uid} that others cannot write (remove it)"
        )
    return folder


class CompileService:
    """The daemon's handle on its running compile service."""

    def __init__(self) -> None:
        self._folder = tempfile.mkdtemp(prefix="gpupool-compile-")
        os.chmod(self._folder, 0o711)  # workers reach the socket, cannot list or add
        self.address = os.path.join(self._folder, "compile.sock")
        env = {**confinement.worker_environment(), "GPUPOOL_CACHE_DIR": str(shared_cache())}
        # Not waited for: a daemon starts at once, and a worker's first compile waits until
        # the socket answers (CompileClient).
        self._process = subprocess.Popen(
            [sys.executable, "-m", __name__, self.address],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )

    def close(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        if self._process.stdin is not None:
            self._process.stdin.close()
        shutil.rmtree(self._folder, ignore_errors=True)


class CompileClient:
    """A worker's way to its daemon's compile service: ``emu_kernels.Compile``."""

    def __init__(self, address: str) -> None:
        self._address = address
        self._conn: Connection | None = None
        self._lock = threading.Lock()

    def __call__(self, source: str, options: Sequence[str]) -> emu_kernels.Compiled:
        request = json.dumps({"source": source, "options": list(options)}).encode()
        with self._lock:
            try:
                conn = self._connection()
                conn.send_bytes(request)
                if not conn.poll(REPLY_TIMEOUT_S):
                    raise CompileError(f"the compile service gave no answer in {REPLY_TIMEOUT_S} s")
                reply = json.loads(conn.recv_bytes())
            except (OSError, EOFError) as exc:
                self._conn = None
                raise CompileError(f"the emulator's compile service is gone: {exc}") from exc
        if "error" in reply:
            raise CompileError(reply["error"], log=reply.get("log", ""))
        return emu_kernels.Compiled(Path(reply["path"]), tuple(reply["names"]))

    def _connection(self) -> Connection:
        """The connection, made on first use: while the service is starting, its socket is
        not there yet or refuses; it has START_TIMEOUT_S to answer."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while self._conn is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(self._address)
            except (FileNotFoundError, ConnectionRefusedError):
                sock.close()
                if time.monotonic() > deadline:
                    raise CompileError(
                        f"the emulator's compile service did not start in {START_TIMEOUT_S} s"
                    ) from None
                time.sleep(0.02)
                continue
            self._conn = Connection(sock.detach())
        return self._conn


def _peer_uid(sock: socket.socket) -> int:
    credentials = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", credentials)
    return int(uid)


def _serve(sock: socket.socket, slots: threading.BoundedSemaphore) -> None:
    """Compile for one worker until it hangs up."""
    with Connection(sock.detach()) as conn, _released(slots):
        while True:
            try:
                request = json.loads(conn.recv_bytes(MAX_REQUEST))
                source, options = request["source"], request["options"]
                if not isinstance(source, str) or not all(isinstance(o, str) for o in options):
                    raise CompileError("a compile request holds a source and its options")
                check_includes(source, options)  # a worker may send what no session checked
                compiled = emu_kernels.compile_module(source, options)
                reply = {"path": str(compiled.path), "names": list(compiled.names)}
            except (EOFError, OSError):
                return
            except CompileError as exc:
                reply = {"error": exc.message, "log": exc.log}
            except (ValueError, KeyError, TypeError) as exc:
                reply = {"error": f"a malformed compile request: {exc}"}
            conn.send_bytes(json.dumps(reply).encode())


def _end_with_the_daemon() -> None:
    sys.stdin.buffer.read()  # until the daemon closes the pipe, or is gone
    os._exit(0)


def main(argv: list[str]) -> int:
    (address,) = argv
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(address + ".new")
    os.chmod(address + ".new", 0o666)  # who may talk is checked per connection
    listener.listen(64)
    os.rename(address + ".new", address)  # there once it answers
    uid = confinement.compiler_uid()
    confinement.drop_to(uid)
    seccomp.no_new_privileges()
    threading.Thread(target=_end_with_the_daemon, daemon=True).start()
    slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
    while True:
        sock, _ = listener.accept()
        peer = _peer_uid(sock)
        if not (confinement.is_worker_uid(peer) or peer in (0, uid)) or not slots.acquire(False):
            sock.close()
            continue
        threading.Thread(target=_serve, args=(sock, slots), daemon=True).start()


@contextlib.contextmanager
def _released(slots: threading.BoundedSemaphore) -> Iterator[None]:
    try:
        yield
    finally:
        slots.release()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
