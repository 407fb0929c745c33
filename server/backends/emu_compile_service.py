"""The emulator's compile service: the one process that writes the kernel cache of confined
workers.

A confined worker may not run programs (its seccomp filter refuses execve), and it must not be
able to plant a module in a cache that another tenant's worker loads. So a daemon whose
workers are confined starts this service once: a fresh interpreter that becomes the
compiler's own user (``confinement.compiler_uid``, no other groups, no new privileges, not
dumpable) and compiles for every worker into a cache that this user alone may write (mode
0755; workers read it and copy what they load into their own temporary files).

It listens nowhere. The daemon hands it one end of a socket pair per worker over its control
socket (``SCM_RIGHTS``) and gives the worker the other end, so only workers reach it, and
a worker needs no socket of its own (its filter allows none). When the control socket closes
(the daemon has ended) the service ends. The daemon does not wait for it to start: what a
worker sends waits in its socket.

The protocol is one JSON message each way per compile, framed as ``multiprocessing``'s
``Connection`` frames: ``{"source", "options"}`` in, ``{"path", "names"}`` or ``{"error",
"log"}`` out.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path

from gpupool.errors import CompileError
from gpupool.logs import fields
from gpupool.server import confinement, seccomp
from gpupool.server.backends import emu_kernels
from gpupool.server.includes import check_includes

log = logging.getLogger(__name__)

ENV_CACHE = "GPUPOOL_EMU_SHARED_CACHE"
DEFAULT_CACHE = "/var/cache/gpupool"
MAX_REQUEST = 64 << 20  # the largest ModuleLoad a session can send is smaller
WATCH_S = 0.2  # how often a compile looks whether its worker is still there
# A compile waits at most the compiler's time limit, and a start, for the reply.
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
        self._control, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._lock = threading.Lock()
        env = {**confinement.worker_environment(), "GPUPOOL_CACHE_DIR": str(shared_cache())}
        with theirs:
            self._process = subprocess.Popen(
                [sys.executable, "-m", __name__, str(theirs.fileno())],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )

    def connect(self) -> socket.socket:
        """A connection to the service for one worker (its peer already handed over). If the
        service is gone, the connection's peer is closed: the worker's compiles say so."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        with theirs, self._lock:
            try:
                socket.send_fds(self._control, [b"w"], [theirs.fileno()])
            except OSError as exc:
                log.warning("the compile service is gone", extra=fields(reason=str(exc)))
        return ours

    def close(self) -> None:
        with self._lock:
            self._control.close()  # the service ends when it sees this
        try:
            self._process.wait(5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


class CompileClient:
    """A worker's way to its daemon's compile service: ``emu_kernels.Compile``."""

    def __init__(self, sock: socket.socket) -> None:
        self._conn = Connection(sock.detach())
        self._lock = threading.Lock()

    def __call__(self, source: str, options: Sequence[str]) -> emu_kernels.Compiled:
        request = json.dumps({"source": source, "options": list(options)}).encode()
        with self._lock:
            try:
                self._conn.send_bytes(request)
                if not self._conn.poll(REPLY_TIMEOUT_S):
                    raise CompileError(f"the compile service gave no answer in {REPLY_TIMEOUT_S} s")
                reply = json.loads(self._conn.recv_bytes())
            except (OSError, EOFError) as exc:
                raise CompileError(f"the emulator's compile service is gone: {exc!r}") from exc
        if "error" in reply:
            raise CompileError(reply["error"], log=reply.get("log", ""))
        return emu_kernels.Compiled(Path(reply["path"]), tuple(reply["names"]))


def _serve(sock: socket.socket) -> None:
    """Compile for one worker until it hangs up."""
    with Connection(sock.detach()) as conn:
        while True:
            try:
                request = json.loads(conn.recv_bytes(MAX_REQUEST))
                source, options = request["source"], request["options"]
                if not isinstance(source, str) or not all(isinstance(o, str) for o in options):
                    raise CompileError("a compile request holds a source and its options")
                check_includes(source, options)  # a worker may send what no session checked
                compiled = _compile_while_connected(conn, source, options)
                if compiled is None:
                    return  # the worker hung up: its compile was stopped
                reply = {"path": str(compiled.path), "names": list(compiled.names)}
            except (EOFError, OSError):
                return
            except CompileError as exc:
                reply = {"error": exc.message, "log": exc.log}
            except (ValueError, KeyError, TypeError) as exc:
                reply = {"error": f"a malformed compile request: {exc}"}
            conn.send_bytes(json.dumps(reply).encode())


def _compile_while_connected(
    conn: Connection, source: str, options: Sequence[str]
) -> emu_kernels.Compiled | None:
    """Compile on a thread of its own while watching the worker's connection: a worker sends
    nothing while it waits, so anything readable (its hang-up, when its session or its
    compile time limit ended it) stops the compiler. None when stopped."""
    cancellation = emu_kernels.Cancellation()
    outcome: list[emu_kernels.Compiled | BaseException] = []

    def compile() -> None:
        try:
            outcome.append(emu_kernels.compile_module(source, options, cancellation))
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=compile, name="compile", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(WATCH_S)
        if worker.is_alive() and conn.poll(0):
            cancellation.cancel()
            worker.join()
            return None
    (result,) = outcome
    if isinstance(result, BaseException):
        raise result
    return result


def main(argv: list[str]) -> int:
    (control_fd,) = argv
    control = socket.socket(fileno=int(control_fd))
    confinement.drop_to(confinement.compiler_uid())
    seccomp.no_new_privileges()
    while True:
        message, fds, _, _ = socket.recv_fds(control, 1, 1)
        if not message:  # the daemon is gone
            return 0
        for fd in fds:
            threading.Thread(target=_serve, args=(socket.socket(fileno=fd),), daemon=True).start()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
