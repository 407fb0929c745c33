"""The HTTP port of a daemon or a scheduler: ``/metrics`` for Prometheus, probes for Kubernetes.

One small WSGI server per process (``--metrics-listen HOST:PORT``), on its own threads, so a
slow scraper never holds up sessions or the scheduler's loop. Besides Prometheus's text format
on ``/metrics`` it answers ``/healthz`` (the process serves: a liveness probe) and ``/readyz``
(200 once the process can do its job, 503 with the reason before: a readiness probe).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

from gpupool.addresses import ListenHosts, join_host_port, split_host_port

Ready = Callable[[], str | None]  # None when ready, else why not
StartResponse = Callable[[str, list[tuple[str, str]]], Any]


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a scrape in progress never keeps the process alive


class _Server6(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    """No line on stderr per request: scrapes come every few seconds (the logs are JSON)."""

    timeout = 10.0  # a scraper that stalls gives its thread back

    def log_message(self, format: str, *args: Any) -> None:
        pass


class MetricsServer:
    """A running metrics port; :func:`serve_metrics` starts one."""

    def __init__(self, server: _Server, host: str) -> None:
        self._server = server
        self.host = host
        self.port: int = server.server_port
        self._thread = threading.Thread(target=server.serve_forever, name="metrics", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://{join_host_port(self.host, self.port)}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


def serve_metrics(
    listen: str, registry: CollectorRegistry, ready: Ready = lambda: None
) -> MetricsServer:
    """Serve ``registry`` on ``listen`` (``HOST:PORT``; port 0 picks one); OSError if it cannot."""
    hosts = ListenHosts.of(listen)
    _, port_text = split_host_port(listen)
    if not port_text.isdigit():
        raise OSError(f"--metrics-listen {listen!r} is not HOST:PORT")
    metrics = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/healthz":
            return _text(start_response, "200 OK", "ok\n")
        if path == "/readyz":
            why = ready()
            if why is None:
                return _text(start_response, "200 OK", "ready\n")
            return _text(start_response, "503 Service Unavailable", f"not ready: {why}\n")
        return metrics(environ, start_response)

    server_class = _Server6 if ":" in hosts.bind else _Server
    server = make_server(hosts.bind, int(port_text), app, server_class, handler_class=_QuietHandler)
    return MetricsServer(server, hosts.local)


def _text(start_response: StartResponse, status: str, body: str) -> list[bytes]:
    data = body.encode()
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(data)))])
    return [data]
