"""Starting and stopping a node daemon: the gRPC front door and one worker pool per device."""

from __future__ import annotations

import dataclasses
import logging
import resource
from concurrent import futures
from dataclasses import dataclass

import grpc

from gpupool.addresses import ListenHosts, join_host_port
from gpupool.errors import GpupoolError
from gpupool.logs import fields
from gpupool.proto.limits import SERVER_OPTIONS
from gpupool.server import confinement
from gpupool.server.admission import Admission
from gpupool.server.backends import BackendConfig, resolve
from gpupool.server.backends.base import DeviceInfo
from gpupool.server.backends.emu_compile_service import CompileService
from gpupool.server.lifecycle import Limits
from gpupool.server.pool import MAX_WORKERS, WorkerPool
from gpupool.server.registration import Registration, node_registration
from gpupool.server.service import MAX_OPENING, DaemonService
from gpupool.server.transports.listener import FrameListener
from gpupool.tls import TLSFiles

try:
    from gpupool.server.transports.ucx_listener import UcxListener
except ImportError:  # the optional extra gpupool[ucx] is not installed: no ucx:// endpoint
    UcxListener = None  # type: ignore[assignment,misc]

log = logging.getLogger(__name__)

SPARE_THREADS = 16  # gRPC threads that no session and no opening stream can take
# Descriptors the front may hold: a stranger's idle connections count too, so the soft limit
# (often 1024) is raised towards the hard one.
WANTED_DESCRIPTORS = 1 << 16


def raise_descriptor_limit() -> int:
    """Raise this process's soft descriptor limit as far as allowed; the limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = WANTED_DESCRIPTORS if hard == resource.RLIM_INFINITY else min(hard, WANTED_DESCRIPTORS)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError) as exc:
            log.warning("descriptor limit not raised", extra=fields(reason=str(exc)))
    return soft


class Daemon:
    """A running daemon; :func:`start_daemon` makes one."""

    def __init__(
        self,
        server: grpc.Server,
        port: int,
        host: str,
        pools: list[WorkerPool],
        devices: list[DeviceInfo],
        backend: str,
        listeners: list[FrameListener | UcxListener],
        endpoints: list[str],
        registration: Registration | None = None,
        compile_service: CompileService | None = None,
    ) -> None:
        self.server = server
        self.confined = compile_service is not None  # emulator workers confine themselves
        self.compile_service = compile_service
        self.registration = registration
        self.port = port
        self.host = host
        self.backend = backend
        self.devices = devices
        self.endpoints = endpoints
        self._pools = pools
        self._listeners = listeners
        self._stopped = False

    @property
    def pools(self) -> list[WorkerPool]:
        """The worker pool of each device."""
        return list(self._pools)

    @property
    def address(self) -> str:
        """``host:port`` for clients (``GPUPOOL_DAEMONS``)."""
        return join_host_port(self.host, self.port)

    def wait(self) -> None:
        self.server.wait_for_termination()

    def stop(self, grace: float = 1.0) -> None:
        """Stop serving and end every worker; stopping again does nothing."""
        if self._stopped:
            return
        self._stopped = True
        if self.registration is not None:
            self.registration.stop()
        for listener in self._listeners:
            listener.close()
        self.server.stop(grace).wait()
        for pool in self._pools:
            pool.close()
        if self.compile_service is not None:
            self.compile_service.close()
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
    tls: TLSFiles | None = None,
    membership: PoolMembership | None = None,
    trusted_emulator: bool = False,
    limits: Limits | None = None,
) -> Daemon:
    """Start a daemon listening on ``listen`` (port 0 picks a free port) and return it.

    With ``membership``, the daemon registers with that scheduler and opens sessions only with
    its grants; without, it is a bare daemon that admits every session.

    Besides gRPC on ``listen`` it serves ``shm://`` on a Unix socket and, without TLS,
    ``tcp://`` (and ``ucx://`` where ucxx is installed) on other ports of the same host
    (those carry no TLS: a daemon with TLS offers only encrypted gRPC across hosts).

    On the emulator, workers are confined where the daemon can confine them (as root; see
    ``server/confinement.py``); where it cannot, a daemon in a pool refuses to start unless
    ``trusted_emulator`` says the pool's tenants are trusted (``gpupool run -n``'s embedded pool
    is the user's own). A bare daemon serves unconfined: its sessions are its user's.

    ``limits`` bound a session's kernels and compiles (default: :meth:`Limits.from_env`).
    """
    limits = limits or Limits.from_env()
    raise_descriptor_limit()
    config, devices = resolve(backend, emu_devices, emu_memory)
    compile_service = _confine_emulator(config, membership is not None, trusted_emulator)
    if compile_service is not None:
        config = dataclasses.replace(config, confined=True)
    if tls is not None and compile_service is not None and tls.key.stat().st_mode & 0o004:
        # confined workers run as users of their own: they could read it
        log.warning("the TLS key file is world-readable", extra=fields(path=str(tls.key)))
    pooled = membership is not None
    pools = [
        WorkerPool(config, index, warm, log_level, limits, pooled, compile_service)
        for index in range(len(devices))
    ]
    admission = Admission(membership.name, membership.secret) if membership else Admission()
    service = DaemonService(config.kind, devices, pools, admission)
    # Each open session holds a thread (bounded by the pools' worker slots), and so does each
    # stream waiting for its opening (bounded by MAX_OPENING): threads are left for GetInfo.
    threads = futures.ThreadPoolExecutor(
        max_workers=MAX_WORKERS * len(pools) + MAX_OPENING + SPARE_THREADS
    )
    server = grpc.server(threads, options=SERVER_OPTIONS)
    server.add_generic_rpc_handlers((service.handler(),))
    cause: RuntimeError | None = None
    try:
        if tls is None:
            port = server.add_insecure_port(listen)
        else:
            port = server.add_secure_port(listen, tls.credentials())
    except RuntimeError as exc:
        port, cause = 0, exc
    if port == 0:
        for pool in pools:
            pool.close()
        if compile_service is not None:
            compile_service.close()
        raise OSError(f"cannot listen on {listen} (in use?)") from cause
    server.start()
    hosts = ListenHosts.of(listen)
    client_certificates = tls is not None and tls.client_ca is not None
    frames = FrameListener(
        service, None if tls else hosts.bind, hosts.public, not client_certificates
    )
    listeners: list[FrameListener | UcxListener] = [frames]
    if UcxListener is not None and tls is None:
        listeners.append(UcxListener(service, hosts.public))
    # fastest first: shared memory on this host, then UCX, TCP frames, gRPC
    shm, tcp = frames.endpoints[:1], frames.endpoints[1:]
    ucx = [url for listener in listeners[1:] for url in listener.endpoints]
    service.endpoints.extend([*shm, *ucx, *tcp, f"grpc://{join_host_port(hosts.public, port)}"])
    log.info(
        "daemon listening",
        extra=fields(
            address=listen,
            backend=config.kind,
            devices=len(devices),
            endpoints=service.endpoints,
        ),
    )
    registration = None
    if membership is not None:
        node = node_registration(
            membership.name,
            join_host_port(hosts.public, port),
            config.kind,
            devices,
            membership.oversubscription,
            reserved=warm * config.idle_worker_memory,
        )
        registration = Registration(
            membership.scheduler, node, devices, pools, admission, membership.secret
        )
        admission.check_with(registration.allocation_live)
        registration.start()
    elif not hosts.loopback:
        log.warning(
            "a bare daemon off loopback admits every session: join a pool with --scheduler",
            extra=fields(address=listen),
        )
    endpoints = list(service.endpoints)
    return Daemon(
        server,
        port,
        hosts.local,
        pools,
        devices,
        config.kind,
        listeners,
        endpoints,
        registration,
        compile_service,
    )


def _confine_emulator(config: BackendConfig, pooled: bool, trusted: bool) -> CompileService | None:
    """The compile service of confined emulator workers; None for a GPU or unconfined ones."""
    if config.kind != "emu":
        return None
    reason = confinement.unavailable()
    if reason is None:
        return CompileService()
    if pooled and not (trusted or confinement.trusted_from_environment()):
        raise GpupoolError(
            f"cannot confine the emulator's kernels ({reason}): a pool's tenants would run"
            " native code with the daemon's rights. Run the daemon as root, or pass"
            f" --trusted-emulator (or {confinement.ENV_TRUSTED}=1) for a trusted development"
            " pool"
        )
    log.warning("emulated kernels run unconfined", extra=fields(reason=reason, pooled=pooled))
    return None


@dataclass(frozen=True)
class PoolMembership:
    """How a daemon joins a pool: the scheduler's address, its node name, the secret."""

    scheduler: str
    name: str
    secret: bytes
    oversubscription: float = 1.0
