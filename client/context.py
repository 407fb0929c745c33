"""Which daemons this process uses, their devices as one list of ordinals, and the sessions.

Device ordinals span daemons: with ``GPUPOOL_DAEMONS=a:7001,b:7001`` and two devices on each,
ordinals 0-1 are a's and 2-3 are b's. With an allocation from the pool scheduler
(``GPUPOOL_ALLOCATION``, which wins over ``GPUPOOL_DAEMONS``), the ordinals are the
allocation's GPUs in its order, whichever daemons they are on, each reporting its quota as
its memory and opening its session with the lease's current grant. A session opens on first
use of a device, over the fastest transport the daemon offers that this client can reach
(``GPUPOOL_TRANSPORT`` chooses one). The current device is per thread, as in CUDA.
"""

from __future__ import annotations

import atexit
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import grpc

from gpupool.client.lease import ENV_ALLOCATION, Lease, Placement, attach
from gpupool.client.peers import PeerLinks
from gpupool.client.session import Session
from gpupool.errors import ConnectionLost, CUDARuntimeError, GpupoolError
from gpupool.proto import gpupool_pb2 as pb
from gpupool.proto import gpupool_pb2_grpc as pb_grpc
from gpupool.proto.limits import GRPC_OPTIONS
from gpupool.tls import TLS
from gpupool.transport.links import OPENERS, Endpoint, Link, candidates

ENV_DAEMONS = "GPUPOOL_DAEMONS"


class DaemonLinks:
    """One daemon: its gRPC channel, what it said of itself, and the transport its sessions
    use."""

    def __init__(self, address: str, channel: grpc.Channel, info: pb.DaemonInfo) -> None:
        self.address = address
        self.channel = channel
        self.backend = info.backend
        grpc_url = f"grpc://{address.removeprefix('grpc://')}"  # the address that answered
        self.endpoints = [
            url if not url.startswith("grpc://") else grpc_url for url in info.endpoints
        ]
        if not any(url.startswith("grpc://") for url in self.endpoints):
            self.endpoints.append(grpc_url)
        self.transport: str | None = None  # the scheme chosen, once a session has opened

    def open(self, wanted: str | None, timeout: float) -> Link:
        """A new link to this daemon, over the first of its endpoints that can be reached."""
        failures = []
        for url in candidates(self.endpoints, wanted):
            endpoint = Endpoint(url, self.channel)
            try:
                link = OPENERS[endpoint.scheme](endpoint, timeout)
            except OSError as exc:
                failures.append(f"{url}: {exc}")
                continue
            self.transport = endpoint.scheme
            return link
        raise ConnectionLost(f"cannot reach daemon {self.address}: " + "; ".join(failures))


@dataclass(frozen=True)
class Device:
    """A device ordinal's place: which daemon, and which of its devices."""

    address: str
    index: int
    properties: pb.DeviceProperties


class Context:
    """The daemons of this process and the sessions opened on their devices.

    With ``lease``, the devices are the lease's GPUs (``addresses`` is then ignored), and
    ``owns_lease`` says whether closing the context stops renewing it.
    """

    def __init__(
        self,
        addresses: Sequence[str],
        connect_timeout: float = 10.0,
        transport: str | None = None,
        tls: TLS | None = None,
        lease: Lease | None = None,
        owns_lease: bool = False,
    ) -> None:
        self.devices: list[Device] = []
        self.daemons: dict[str, DaemonLinks] = {}
        self._lease = lease
        self._owns_lease = owns_lease
        if lease is not None:
            addresses = list(dict.fromkeys(p.address for p in lease.placements))
        infos: dict[str, pb.DaemonInfo] = {}
        self._transport = transport
        self._timeout = connect_timeout
        self._channels: list[grpc.Channel] = []
        self._sessions: dict[int, Session] = {}
        self._lock = threading.Lock()
        self.peers = PeerLinks(self)
        self._local = threading.local()
        tls = tls or TLS.from_env()
        for address in addresses:
            target = address.removeprefix("grpc://")
            if tls is None:
                channel = grpc.insecure_channel(target, GRPC_OPTIONS)
            else:
                channel = grpc.secure_channel(target, tls.credentials(), GRPC_OPTIONS)
            self._channels.append(channel)
            stub = pb_grpc.DaemonStub(channel)
            try:
                info = stub.GetInfo(pb.InfoRequest(), timeout=connect_timeout, wait_for_ready=True)
            except grpc.RpcError as exc:
                self.close()
                raise ConnectionLost(f"cannot reach daemon {address}: {exc.code().name}") from exc
            self.daemons[address] = DaemonLinks(address, channel, info)
            infos[address] = info
            self.devices += [Device(address, i, props) for i, props in enumerate(info.devices)]
        if lease is not None:
            self.devices = [_placed(p, infos[p.address]) for p in lease.placements]

    @property
    def current_device(self) -> int:
        return getattr(self._local, "device", 0)

    @current_device.setter
    def current_device(self, ordinal: int) -> None:
        self.device(ordinal)  # validates
        previous = self.current_device
        self._local.device = ordinal
        leaving = self._sessions.get(previous) if previous != ordinal else None
        if leaving is not None and leaving.queued:
            leaving.flush()  # the device works on its queue while the program turns away

    def grant(self, ordinal: int) -> str:
        """The lease's current grant for ``ordinal`` ("" without a lease)."""
        return self._lease.placements[ordinal].grant if self._lease else ""

    def _send_others(self, waiting: Session) -> None:
        """Before a wait on one device, send every other device's queued work, so the
        devices run at the same time and none waits on a queue the program left behind."""
        for session in list(self._sessions.values()):
            if session is not waiting and session.queued:
                session.flush()

    def device(self, ordinal: int) -> Device:
        if not 0 <= ordinal < len(self.devices):
            raise CUDARuntimeError(
                "cudaErrorInvalidDevice",
                f"device {ordinal} does not exist ({len(self.devices)} devices)",
            )
        return self.devices[ordinal]

    def properties(self, ordinal: int) -> pb.DeviceProperties:
        """The device's properties; a leased share's from its session (opened now), whose
        worker knows the memory it really has: the share less the worker's CUDA context."""
        if self._lease is not None:
            return self.session(ordinal).properties
        return self.device(ordinal).properties

    def session(self, ordinal: int | None = None) -> Session:
        """The session on ``ordinal`` (the current device by default), opened on first use."""
        ordinal = self.current_device if ordinal is None else ordinal
        session = self._sessions.get(ordinal)  # no lock for a session that is open
        if session is not None:
            return session
        with self._lock:
            session = self._sessions.get(ordinal)
            if session is None:
                device = self.device(ordinal)
                link = self.daemons[device.address].open(self._transport, self._timeout)
                session = Session(link, device.index, self.grant(ordinal), self._send_others)
                self._sessions[ordinal] = session
            return session

    def close(self) -> None:
        """End every session (their memory is freed) and close the channels."""
        with self._lock:
            sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            session.close()
        for channel in self._channels:
            channel.close()
        if self._lease is not None and self._owns_lease:
            self._lease.close()


def _placed(placement: Placement, info: pb.DaemonInfo) -> Device:
    """A device of an allocation: its daemon's properties, with the quota as its memory."""
    if placement.index >= len(info.devices):
        raise CUDARuntimeError(
            "cudaErrorInvalidDevice",
            f"daemon {placement.address} has no device {placement.index} (restarted smaller?)",
        )
    properties = pb.DeviceProperties()
    properties.CopyFrom(info.devices[placement.index])
    properties.total_memory = min(properties.total_memory, placement.memory)
    return Device(placement.address, placement.index, properties)


_context: Context | None = None
_context_lock = threading.Lock()


def connect(
    addresses: str | Sequence[str] | None = None,
    timeout: float = 10.0,
    transport: str | None = None,
    tls: TLS | None = None,
    lease: Lease | None = None,
) -> Context:
    """Use the daemons at ``addresses`` (``host:port``, comma-separated or a list), or the
    GPUs of ``lease`` (from :func:`gpupool.client.lease.allocate`).

    Without either, ``GPUPOOL_ALLOCATION`` names an allocation to use, else
    ``GPUPOOL_DAEMONS`` names daemons. Replaces an earlier connection. ConnectionLost when
    a daemon does not answer within ``timeout`` seconds. ``transport`` (else
    ``GPUPOOL_TRANSPORT``) names the one transport to use: ``grpc``, ``tcp``, ``shm`` or
    ``ucx``; by default the fastest that works. ``tls`` (else ``GPUPOOL_TLS_CA``, ...) makes
    the gRPC channel use TLS.
    """
    global _context
    owns_lease = False
    if addresses is None and lease is None and os.environ.get(ENV_ALLOCATION):
        lease, owns_lease = attach(os.environ[ENV_ALLOCATION]), True
    if addresses is None:
        addresses = os.environ.get(ENV_DAEMONS, "")
    if isinstance(addresses, str):
        addresses = [part.strip() for part in addresses.split(",") if part.strip()]
    if not addresses and lease is None:
        raise GpupoolError(
            f"no daemons: call gpupool.connect('host:port') or set {ENV_DAEMONS}=host:port[,...]"
            f" (or {ENV_ALLOCATION}, from gpupool request)"
        )
    try:
        context = Context(addresses, timeout, transport, tls, lease, owns_lease)
    except BaseException:
        if owns_lease and lease is not None:
            lease.close()
        raise
    with _context_lock:
        previous, _context = _context, context
    if previous is not None:
        previous.close()
    return context


def current() -> Context:
    """The process's context, connecting through ``GPUPOOL_DAEMONS`` on first use."""
    if _context is None:
        connect()
    assert _context is not None
    return _context


def active() -> Context | None:
    """The process's context if it is connected; None (and no connecting) otherwise."""
    return _context


def disconnect() -> None:
    """End every session and forget the daemons."""
    global _context
    with _context_lock:
        context, _context = _context, None
    if context is not None:
        context.close()


atexit.register(disconnect)
