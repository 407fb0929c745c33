"""The front's listeners for frame transports: TCP (``tcp://``) and a Unix socket (``shm://``).

Each accepted connection's first frame says what it is: ``open`` starts a session on a
worker, ``attach`` adds a payload stripe to an open one. Either way the socket then goes to
the session's worker, and the front reads nothing more from it.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import socket
import tempfile
import threading
import time

from google.protobuf.message import DecodeError

from gpupool.addresses import join_host_port
from gpupool.errors import ConnectionLost, CUDARuntimeError
from gpupool.logs import fields
from gpupool.proto import gpupool_pb2 as pb
from gpupool.server import service as front
from gpupool.server.service import DaemonService, refuse
from gpupool.transport.frames import MESSAGE, FrameSocket
from gpupool.transport.payload import MAX_STRIPES

log = logging.getLogger(__name__)

# An opening frame (open with its grant, or attach) is small: a stranger's claimed length must
# not make the front set aside up to MAX_MESSAGE bytes for each connection it holds.
HELLO_MAX = 64 << 10
BACKLOG = 128
ACCEPT_PAUSE_S = 0.01  # after an accept that failed for want of descriptors; doubled up to
ACCEPT_PAUSE_MAX_S = 1.0
_OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


class FrameListener:
    """Accepts frame-transport connections for one daemon."""

    def __init__(
        self,
        service: DaemonService,
        tcp_host: str | None,
        public_host: str,
        shm_for_everyone: bool = True,
    ) -> None:
        """Listen on TCP at ``tcp_host`` (port 0; None: no TCP) and on a fresh Unix socket.

        The Unix socket is open to every local user, as the daemon's ports are, unless
        ``shm_for_everyone`` is False: a daemon that admits only clients holding a certificate
        keeps it to its own user, since a Unix socket asks for none (others' clients find it
        closed and go on to gRPC with their certificate).
        """
        self._service = service
        self._listeners: list[socket.socket] = []
        self._closed = False
        self.endpoints: list[str] = []
        self._folder = tempfile.mkdtemp(prefix="gpupool-")
        os.chmod(self._folder, 0o711)  # other local users may connect, not list
        path = os.path.join(self._folder, "daemon.sock")
        unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        unix.bind(path)
        os.chmod(path, 0o666 if shm_for_everyone else 0o600)
        self._start(unix, shared_memory=True)
        self.endpoints.append(f"shm://{socket.gethostname()}{path}")
        if tcp_host is not None:
            family = socket.AF_INET6 if ":" in tcp_host else socket.AF_INET
            tcp = socket.socket(family, socket.SOCK_STREAM)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            tcp.bind((tcp_host, 0))
            self._start(tcp, shared_memory=False)
            port = tcp.getsockname()[1]
            self.endpoints.append(f"tcp://{join_host_port(public_host, port)}")

    def close(self) -> None:
        """Stop accepting (open sessions go on until their workers end)."""
        self._closed = True
        for listener in self._listeners:
            try:
                listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            listener.close()
        shutil.rmtree(self._folder, ignore_errors=True)

    def _start(self, listener: socket.socket, shared_memory: bool) -> None:
        listener.listen(BACKLOG)
        self._listeners.append(listener)
        threading.Thread(
            target=self._accept, args=(listener, shared_memory), name="accept", daemon=True
        ).start()

    def _accept(self, listener: socket.socket, shared_memory: bool) -> None:
        pause = ACCEPT_PAUSE_S
        while True:
            try:
                sock, _peer = listener.accept()
            except OSError as exc:
                if exc.errno not in _OUT_OF_RESOURCES or self._closed:
                    return  # closed
                # Out of descriptors (a burst of connections): the pending ones wait in the
                # backlog until some close; the listener must not end for good.
                log.warning("accept failed: backing off", extra=fields(reason=str(exc)))
                time.sleep(pause)
                pause = min(2 * pause, ACCEPT_PAUSE_MAX_S)
                continue
            pause = ACCEPT_PAUSE_S
            try:
                serve = threading.Thread(
                    target=self._serve, args=(sock, shared_memory), name="frame-session"
                )
                serve.daemon = True
                serve.start()
            except RuntimeError as exc:  # no thread to be had: drop this one, go on
                log.warning("connection dropped", extra=fields(reason=str(exc)))
                sock.close()

    def _serve(self, sock: socket.socket, shared_memory: bool) -> None:
        frames = FrameSocket(sock, read_ahead=False)  # the rest is the worker's to read
        try:
            deadline = time.monotonic() + front.OPENING_DEADLINE_S  # read now: tests set it
            kind, first, payload = frames.receive(HELLO_MAX, deadline)
            sock.settimeout(None)
        except (ConnectionLost, OSError):
            frames.close()
            return
        request = pb.Request()
        try:
            request.ParseFromString(first)
        except DecodeError:
            request = pb.Request()
        if kind == MESSAGE and not payload and request.HasField("attach") and not shared_memory:
            self._service.attach_stripe(frames, request.attach)
        elif kind == MESSAGE and not payload and request.HasField("attach_peer"):
            self._service.attach_peer(frames, request.attach_peer, shared_memory)
        elif kind == MESSAGE and request.open.stripes > MAX_STRIPES:
            problem = f"{request.open.stripes} stripes asked for; a session may use {MAX_STRIPES}"
            refuse(frames, CUDARuntimeError("cudaErrorInvalidValue", problem))
        elif kind == MESSAGE and not payload:
            self._service.serve_connection(frames, first, shared_memory)
        else:
            log.info("connection refused", extra=fields(reason="not a gpupool client"))
            frames.close()
