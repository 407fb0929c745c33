"""``gpupool webhook``: the Kubernetes mutating admission webhook, served over TLS.

The API server POSTs an ``AdmissionReview`` (``admission.k8s.io/v1``) for each pod created in
the namespaces the ``MutatingWebhookConfiguration`` selects; the answer allows it with a JSON
patch that runs it through the pool (``pod_patch.py``), allows it untouched (no
``gpupool.io/gpus``), or refuses it with a message naming what is wrong. A request that is
not an AdmissionReview at all gets HTTP 400. ``/healthz`` answers the probes.

TLS is the API server's requirement. The handshake happens on the connection's own thread,
so a client that stalls holds that thread, not the listener; every read has a timeout, a
connection lives at most a minute (the API server opens another), at most 128 are served at
once, and bodies are bounded. A renewed certificate (cert-manager rewrites the Secret's
files) is taken up without a restart: the files are looked at again every half minute.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import signal
import socket
import ssl
import sys
import threading
import time
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from gpupool.addresses import ListenHosts, join_host_port, split_host_port
from gpupool.cli.options import add_log_level
from gpupool.cli.pod_patch import InjectConfig, Refused, SecretEnv, patch_pod
from gpupool.logs import fields

NAME = "webhook"
MAX_BODY = 4 << 20  # a pod is at most 1.5 MiB in etcd; its review a little more
REQUEST_TIMEOUT_S = 10.0  # for each read and write
CONNECTION_S = 60.0  # a connection (kept alive between reviews) is closed after this long
MAX_CONNECTIONS = 128  # more at once are closed as they come
REVIEW_VERSION = "admission.k8s.io/v1"
RELOAD_S = 30.0


def add(commands: Any) -> None:
    parser = commands.add_parser(
        NAME,
        help="serve the Kubernetes admission webhook that runs pods through the pool",
        description="Mutating admission webhook: pods annotated gpupool.io/gpus (with"
        " gpupool.io/fraction or gpupool.io/memory, ...) get the client's environment and"
        " their command wrapped in `gpupool run`; malformed requests are refused.",
    )
    parser.add_argument(
        "--listen", default="0.0.0.0:8443", metavar="HOST:PORT", help="(default 0.0.0.0:8443)"
    )
    parser.add_argument("--tls-cert", type=Path, required=True, metavar="PEM")
    parser.add_argument("--tls-key", type=Path, required=True, metavar="PEM")
    parser.add_argument(
        "--scheduler", required=True, metavar="HOST:PORT", help="the scheduler pods allocate from"
    )
    parser.add_argument(
        "--client-command",
        default="gpupool",
        metavar="PATH",
        help="how the pods' images run gpupool (default gpupool)",
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="VAR=VALUE",
        help="a client setting every wrapped container gets (e.g. GPUPOOL_TRANSPORT=tcp)",
    )
    parser.add_argument(
        "--secret-env",
        action="append",
        type=SecretEnv.parse,
        default=[],
        metavar="VAR=SECRET:KEY",
        help="a variable taken from a Secret of the pod's namespace",
    )
    parser.add_argument(
        "--ca-secret",
        metavar="SECRET",
        help="a Secret (key ca.crt) mounted in the pods, GPUPOOL_TLS_CA set to it",
    )
    add_log_level(parser, "info")


def main(args: argparse.Namespace) -> int:
    env = {}
    for item in args.env:
        name, equals, value = item.partition("=")
        if not name or not equals:
            print(f"gpupool webhook: --env {item!r} is not VAR=VALUE", file=sys.stderr)
            return 2
        env[name] = value
    config = InjectConfig(args.scheduler, args.client_command, env, args.secret_env, args.ca_secret)
    try:
        webhook = serve_webhook(args.listen, config, args.tls_cert, args.tls_key)
    except (OSError, ssl.SSLError) as exc:
        print(f"gpupool webhook: {exc}", file=sys.stderr)
        return 1
    print(f"gpupool webhook on {webhook.url}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=webhook.close).start())
    try:
        webhook.wait()
    except KeyboardInterrupt:
        webhook.close()
    return 0


def review(body: Mapping[str, Any], config: InjectConfig) -> dict[str, Any]:
    """The answer to an AdmissionReview; ValueError when ``body`` is not one."""
    request = body.get("request")
    if body.get("kind") != "AdmissionReview" or not isinstance(request, Mapping):
        raise ValueError("not an AdmissionReview with a request")
    uid = request.get("uid")
    if not isinstance(uid, str) or not uid:
        raise ValueError("the AdmissionReview's request has no uid")
    response: dict[str, Any] = {"uid": uid, "allowed": True}
    pod = request.get("object")
    kind = (request.get("kind") or {}).get("kind")
    if kind == "Pod" and request.get("operation", "CREATE") == "CREATE":
        try:
            if not isinstance(pod, Mapping):
                raise Refused("the review carries no pod")
            patch = patch_pod(pod, config)
        except Refused as exc:
            response = {"uid": uid, "allowed": False, "status": {"code": 400, "message": str(exc)}}
        else:
            if patch:
                response["patchType"] = "JSONPatch"
                response["patch"] = base64.b64encode(json.dumps(patch).encode()).decode()
    return {"apiVersion": REVIEW_VERSION, "kind": "AdmissionReview", "response": response}


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self._send(200, b"ok\n", "text/plain")
        else:
            self._send(404, b"not found\n", "text/plain")

    def do_POST(self) -> None:
        length = self.headers.get("Content-Length", "")
        if not length.isdigit() or int(length) > MAX_BODY:
            self._send(400, f"a body of at most {MAX_BODY} bytes, with its length\n".encode())
            return
        raw = self.rfile.read(int(length))
        if self.path.split("?")[0] != "/mutate":
            self._send(404, b"POST AdmissionReviews to /mutate\n", "text/plain")
            return
        try:
            body = json.loads(raw)
            if not isinstance(body, dict):
                raise ValueError("the body is not a JSON object")
            answer = review(body, self.server.config)
        except ValueError as exc:  # json's errors are ValueErrors too
            self._send(400, f"{exc}\n".encode(), "text/plain")
            return
        response = answer["response"]
        self.server.log.info(
            "admission review",
            extra=fields(
                uid=response["uid"],
                allowed=response["allowed"],
                patched="patch" in response,
                reason=response.get("status", {}).get("message", ""),
            ),
        )
        self._send(200, json.dumps(answer).encode(), "application/json")

    def _send(self, status: int, body: bytes, kind: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one JSON line per review instead (above)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = MAX_CONNECTIONS  # the listen backlog (socketserver's default is 5)

    def __init__(self, address: tuple[str, int], config: InjectConfig, tls: _Certificate) -> None:
        self.config = config
        self.tls = tls
        self.log = logging.getLogger(__name__)
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # too many at once: this one is closed
            return
        super().process_request(request, client_address)

    def finish_request(self, request: Any, client_address: Any) -> None:
        """On the connection's thread: the TLS handshake, then its requests, in bounded time."""
        request.settimeout(REQUEST_TIMEOUT_S)
        deadline = threading.Timer(CONNECTION_S, _cut, (request,))
        deadline.start()
        try:
            secured = self.tls.context().wrap_socket(request, server_side=True)
            try:
                super().finish_request(secured, client_address)
            finally:
                secured.close()
        except (OSError, ssl.SSLError):
            pass  # a failed handshake, or the connection cut: nothing to answer
        finally:
            deadline.cancel()
            self._slots.release()


def _cut(sock: socket.socket) -> None:
    """End a connection that has lived too long (its thread's next read or write fails)."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # closed already


class _Certificate:
    """The server's TLS context, made again when its certificate's files change."""

    def __init__(self, cert: Path, key: Path) -> None:
        self._files = (cert, key)
        self._lock = threading.Lock()
        self._stamp = self._look()
        self._context = self._load()
        self._checked = time.monotonic()

    def context(self) -> ssl.SSLContext:
        with self._lock:
            if time.monotonic() - self._checked >= RELOAD_S:
                self._checked = time.monotonic()
                stamp = self._look()
                if stamp != self._stamp:
                    try:
                        self._context, self._stamp = self._load(), stamp
                    except (OSError, ssl.SSLError) as exc:  # half written: try again later
                        logging.getLogger(__name__).warning(
                            "certificate not reloaded", extra=fields(reason=str(exc))
                        )
            return self._context

    def _look(self) -> tuple[float, ...]:
        try:
            return tuple(path.stat().st_mtime for path in self._files)
        except OSError:
            return ()

    def _load(self) -> ssl.SSLContext:
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.minimum_version = ssl.TLSVersion.TLSv1_2
        tls.load_cert_chain(*self._files)
        return tls


class Webhook:
    """A running webhook; :func:`serve_webhook` starts one."""

    def __init__(self, server: _Server, host: str) -> None:
        self._server = server
        self.host = host
        self.port: int = server.server_address[1]
        self._thread = threading.Thread(target=server.serve_forever, name="webhook", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"https://{join_host_port(self.host, self.port)}"

    def wait(self) -> None:
        while self._thread.is_alive():
            self._thread.join(0.5)  # a timed join lets Ctrl-C through

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


def serve_webhook(listen: str, config: InjectConfig, cert: Path, key: Path) -> Webhook:
    """Serve the webhook over TLS on ``listen`` (port 0 picks one)."""
    tls = _Certificate(cert, key)
    hosts = ListenHosts.of(listen)
    _, port = split_host_port(listen)
    if not port.isdigit():
        raise OSError(f"--listen {listen!r} is not HOST:PORT")
    return Webhook(_Server((hosts.bind, int(port)), config, tls), hosts.local)
