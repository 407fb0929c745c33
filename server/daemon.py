"""Starting and stopping a node daemon: the gRPC front door and one worker pool per device."""

from __future__ import annotations

import logging
from concurrent import futures

import grpc
from gpupool.server.backends import resolve
from gpupool.server.backends.base import DeviceInfo
from gpupool.server.pool import WorkerPool
from gpupool.server.service import DaemonService

from gpupool.logs import fields

log = logging.getLogger(__name__)

MESSAGE_LIMIT = 64 << 20
GRPC_OPTIONS = [
    ("grpc.max_send_message_length", MESSAGE_LIMIT),
    ("grpc.max_receive_message_length", MESSAGE_LIMIT),
]


class Daemon:
    """A running daemon; :func:`start_daemon` makes one."""

    def __init__(
        self,
        server: grpc.Server,
        port: int,
        host: str,
        service: DaemonService,
        pools: list[WorkerPool],
        devices: list[DeviceInfo],
        backend: str,
    ) -> None:
        self.server = server
        self.port = port
        self.host = host
        self.backend = backend
        self.devices = devices
        self._service = service
        self._pools = pools
        self._stopped = False

    @property
    def address(self) -> str:
        """``host:port`` for clients (``GPUPOOL_DAEMONS``)."""
        return f"{self.host}:{self.port}"

    def wait(self) -> None:
        self.server.wait_for_termination()

    def stop(self, grace: float = 1.0) -> None:
        """Stop serving and end every worker; stopping again does nothing."""
        if self._stopped:
            return
        self._stopped = True
        self.server.stop(grace).wait()
        for pool in self._pools:
            pool.close()
        log.info("daemon stopped", extra=fields(address=self.address))

    def __enter__(self) -> Daemon:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start_daemon(
    listen: str = "127.0.0.1:0",
    backend: str = "auto",
    emu_devices: int = 2,
    emu_memory: int = 8 << 30,
    warm: int = 1,
    log_level: str = "info",
    max_sessions: int = 256,
) -> Daemon:
    """Start a daemon listening on ``listen`` (port 0 picks a free port) and return it."""
    config, devices = resolve(backend, emu_devices, emu_memory)
    pools = [WorkerPool(config, index, warm, log_level) for index in range(len(devices))]
    service = DaemonService(config.kind, devices, pools)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_sessions + 8, thread_name_prefix="rpc"),
        options=GRPC_OPTIONS,
        maximum_concurrent_rpcs=max_sessions,
    )
    server.add_generic_rpc_handlers((service.handler(),))
    host = listen.rsplit(":", 1)[0]
    port = server.add_insecure_port(listen)
    if port == 0:
        for pool in pools:
            pool.close()
        raise OSError(f"cannot listen on {listen}")
    server.start()
    host = "127.0.0.1" if host in ("0.0.0.0", "[::]", "") else host.strip("[]")
    service.endpoints.append(f"grpc://{host}:{port}")
    log.info(
        "daemon listening",
        extra=fields(address=f"{host}:{port}", backend=config.kind, devices=len(devices)),
    )
    return Daemon(server, port, host, service, pools, devices, config.kind)
