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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import grpc

from gpupool.client.lease import ENV_ALLOCATION, Lease, Placement, attach
from gpupool.client.liveness import Watchdog, timeout_from_env
from gpupool.client.peers import PeerLinks
from gpupool.client.session import Session
from gpupool.errors import ConnectionLost, CUDARuntimeError, GpupoolError
from gpupool.proto import gpupool_pb2 as pb
from gpupool.proto import gpupool_pb2_grpc as pb_grpc
from gpupool.proto.limits import GRPC_OPTIONS
from gpupool.tls import TLS
from gpupool.tls import channel as tls_channel
from gpupool.transport.failures import translate
from gpupool.transport.links import OPENERS, Endpoint, Link, candidates

ENV_DAEMONS = "GPUPOOL_DAEMONS"
DETACH_TIMEOUT_S = 1.0  # for a detached session's queued calls, before its connection drops
PROBE_TIMEOUT_S = 5.0


class DaemonLinks:
    """One daemon: its gRPC channel, what it said of itself, and the transport its sessions
    use."""

    def __init__(self, address: str, channel: grpc.Channel, info: pb.DaemonInfo) -> None:
        self.address = address
        self.channel = channel
        self.backend = info.backend
        self.devices = list(info.devices)
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
    """A device ordinal's place: which daemon, which of its devices, and the lease (with the
    device's position in it) that holds it, if one does."""

    address: str
    index: int
    properties: pb.DeviceProperties
    lease: Lease | None = None
    position: int = 0  # in the lease's placements

    @property
    def placement(self) -> Placement | None:
        return self.lease.placements[self.position] if self.lease is not None else None


@dataclass(frozen=True)
class AttachedDevice:
    """One row of :func:`gpupool.devices`: an attached ordinal and where it lives."""

    ordinal: int
    node: str  # the pool's name for the node; the daemon's address for a plain daemon
    address: str
    gpu: int  # the daemon's device index
    name: str
    memory: int  # bytes: the quota of a leased share
    share: float  # of the GPU: 1.0 for a plain daemon's device
    allocation: str | None  # the lease's allocation id
    expires_at: float | None  # Unix seconds, unless renewed


class Attachment(tuple[int, ...]):
    """What one attach added to a :class:`Context`: its ordinals (it is their tuple), and its
    lease if it has one.

    ``detach()`` (or leaving its ``with`` block) ends their sessions and gives the lease back
    as ``on_detach`` says: released (``gpupool.attach``), only no longer renewed (a lease
    handed over by ``GPUPOOL_ALLOCATION``, released by its owner), or left alone (a lease the
    program passed in and still holds).
    """

    context: Context
    lease: Lease | None
    _on_detach: Callable[[], None] | None

    def __new__(
        cls,
        context: Context,
        ordinals: Iterable[int],
        lease: Lease | None = None,
        on_detach: Callable[[], None] | None = None,
    ) -> Attachment:
        attachment = super().__new__(cls, ordinals)
        attachment.context = context
        attachment.lease = lease
        attachment._on_detach = on_detach
        return attachment

    @property
    def ordinals(self) -> tuple[int, ...]:
        return tuple(self)

    @property
    def attached(self) -> bool:
        return any(a is self for a in self.context.attachments)

    def detach(self) -> None:
        self.context.detach(self)

    def __enter__(self) -> Attachment:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.detach()

    def __repr__(self) -> str:
        held = f", allocation {self.lease.id}" if self.lease is not None else ""
        return f"<gpupool attachment: devices {list(self)}{held}>"

    def _released(self) -> None:
        if self._on_detach is not None:
            self._on_detach()


class Context:
    """The daemons of this process, the devices attached from them, and their sessions.

    Devices are attached in groups (:class:`Attachment`: some daemons' devices, or a lease's
    GPUs), each appended to the ordinals; detaching one leaves a hole that raises
    ``cudaErrorInvalidDevice``, so every other ordinal keeps its meaning (and the arrays,
    streams and modules on it keep working). Ordinals are never handed out twice by one
    context: the caches kept per ordinal (memory pools, loaded modules) stay right.

    With ``lease``, the devices are the lease's GPUs (``addresses`` is then ignored), and
    ``owns_lease`` says whether closing the context stops renewing it.
    """

    def __init__(
        self,
        addresses: Sequence[str] = (),
        connect_timeout: float = 10.0,
        transport: str | None = None,
        tls: TLS | None = None,
        lease: Lease | None = None,
        owns_lease: bool = False,
        liveness_timeout: float | None = None,
    ) -> None:
        self.devices: list[Device | None] = []  # None: detached
        self.daemons: dict[str, DaemonLinks] = {}
        self.attachments: list[Attachment] = []
        self._transport = transport
        self._timeout = connect_timeout
        self._tls = tls or TLS.from_env()
        self._sessions: dict[int, Session] = {}
        self._watch_lock = threading.Lock()  # not _lock: a session opens while holding that
        self._live: dict[int, Session] = {}  # sessions open or opening, for the watchdog
        self._lock = threading.RLock()
        self.peers = PeerLinks(self)
        self._local = threading.local()
        self._default_device = 0  # a thread's current device until it sets one: the first
        timeout = timeout_from_env() if liveness_timeout is None else liveness_timeout
        self._watchdog = Watchdog(timeout, self._watched)
        try:
            if lease is not None:
                self.attach_lease(lease, lease.close if owns_lease else None)
            elif addresses:
                self.attach_daemons(addresses)
        except BaseException:
            self.close()
            raise

    @property
    def current_device(self) -> int:
        device: int = getattr(self._local, "device", self._default_device)
        return device

    @current_device.setter
    def current_device(self, ordinal: int) -> None:
        self.device(ordinal)  # validates
        self._turn_to(ordinal)

    def _turn_to(self, ordinal: int) -> None:
        previous = self.current_device
        self._local.device = ordinal
        leaving = self._sessions.get(previous) if previous != ordinal else None
        if leaving is not None and leaving.queued:
            leaving.flush()  # the device works on its queue while the program turns away

    def grant(self, ordinal: int) -> str:
        """The lease's current grant for ``ordinal`` ("" without a lease)."""
        placement = self.device(ordinal).placement
        return placement.grant if placement is not None else ""

    def _send_others(self, waiting: Session) -> None:
        """Before a wait on one device, send every other device's queued work, so the
        devices run at the same time and none waits on a queue the program left behind."""
        for session in list(self._sessions.values()):
            if session is not waiting and session.queued:
                session.flush()

    def restore_device(self, ordinal: int) -> None:
        """Make ``ordinal`` current again, unchecked: what a ``with Device(...)`` block
        found current, though it may have been detached meanwhile (its calls then raise
        ``cudaErrorInvalidDevice``, as a lost device's do in CUDA)."""
        self._turn_to(ordinal)

    def device(self, ordinal: int) -> Device:
        found = self.devices[ordinal] if 0 <= ordinal < len(self.devices) else None
        if found is None:
            why = "was detached" if 0 <= ordinal < len(self.devices) else "does not exist"
            raise CUDARuntimeError(
                "cudaErrorInvalidDevice",
                f"device {ordinal} {why} ({len(self.attached_ordinals())} devices attached)",
            )
        return found

    def attached_ordinals(self) -> list[int]:
        return [ordinal for ordinal, device in enumerate(self.devices) if device is not None]

    def attached_devices(self) -> list[AttachedDevice]:
        """Every attached ordinal and where it lives (``gpupool.devices()``)."""
        rows = []
        for ordinal, device in enumerate(self.devices):
            if device is None:
                continue
            placement, lease = device.placement, device.lease
            rows.append(
                AttachedDevice(
                    ordinal=ordinal,
                    node=placement.node if placement is not None else device.address,
                    address=device.address,
                    gpu=device.index,
                    name=device.properties.name,
                    memory=device.properties.total_memory,
                    share=placement.fraction if placement is not None else 1.0,
                    allocation=lease.id if lease is not None else None,
                    expires_at=lease.expires_at if lease is not None else None,
                )
            )
        return rows

    def attached(self, ordinal: int) -> bool:
        return 0 <= ordinal < len(self.devices) and self.devices[ordinal] is not None

    def properties(self, ordinal: int) -> pb.DeviceProperties:
        """The device's properties; a leased share's from its session (opened now), whose
        worker knows the memory it really has: the share less the worker's CUDA context."""
        if self.device(ordinal).lease is not None:
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
                placement = device.placement
                token = placement.grant if placement is not None else ""
                label = f"daemon {device.address}, device {ordinal}"
                self._watchdog.start()
                try:
                    session = Session(
                        link,
                        device.index,
                        token,
                        label,
                        self._watching(ordinal),
                        self._send_others,
                    )
                except BaseException:
                    self._unwatch([ordinal])
                    raise
                self._sessions[ordinal] = session
            return session

    def attach_daemons(self, addresses: Sequence[str]) -> Attachment:
        """Append every device of the daemons at ``addresses``, in order."""
        with self._lock:
            added = [
                Device(address, index, properties)
                for address in addresses
                for index, properties in enumerate(self._daemon(address).devices)
            ]
            return self._append(added, None, None)

    def attach_lease(self, lease: Lease, on_detach: Callable[[], None] | None = None) -> Attachment:
        """Append the GPUs of ``lease``, in its order; ``on_detach`` gives the lease back when
        they are detached (and releasing the lease detaches them)."""
        with self._lock:
            placements = lease.placements
            infos = {p.address: self._daemon(p.address) for p in placements}
            added = [
                _placed(lease, position, placement, infos[placement.address].devices)
                for position, placement in enumerate(placements)
            ]
            attachment = self._append(added, lease, on_detach)
        lease.on_release(attachment.detach)
        return attachment

    def detach(self, what: Attachment | Iterable[int] | None = None) -> list[int]:
        """End the sessions of ``what`` (an attachment, or ordinals: their whole attachments;
        everything by default) and give their leases back. Returns the ordinals detached."""
        with self._lock:
            if what is None:
                chosen = list(self.attachments)
            elif isinstance(what, Attachment):
                chosen = [a for a in self.attachments if a is what]
            else:
                chosen = self._attachments_of(what)
            ordinals = [ordinal for attachment in chosen for ordinal in attachment]
            sessions = [self._sessions.pop(o) for o in ordinals if o in self._sessions]
            self._unwatch(ordinals)
            for ordinal in ordinals:
                self.devices[ordinal] = None
            self._default_device = self._first_attached()
            self.attachments = [a for a in self.attachments if all(a is not c for c in chosen)]
            still_used = {d.address for d in self.devices if d is not None}
            unused = [self.daemons.pop(a) for a in list(self.daemons) if a not in still_used]
        for session in sessions:
            session.close(DETACH_TIMEOUT_S)
        for links in unused:
            links.channel.close()
        for attachment in chosen:
            attachment._released()
        return ordinals

    def close(self) -> None:
        """End every session (their memory is freed) and close the channels."""
        self._watchdog.stop()
        self.detach()
        with self._lock:
            unused, self.daemons = list(self.daemons.values()), {}
        for links in unused:
            links.channel.close()

    def _daemon(self, address: str) -> DaemonLinks:
        """The daemon at ``address``, asked what it has on first use."""
        links = self.daemons.get(address)
        if links is not None:
            return links
        target = address.removeprefix("grpc://")
        if self._tls is None:
            channel = grpc.insecure_channel(target, GRPC_OPTIONS)
        else:
            channel = grpc.secure_channel(target, self._tls.credentials(), GRPC_OPTIONS)
        try:
            info = _get_info(channel, address, self._timeout, wait_for_ready=True)
        except BaseException:
            channel.close()
            raise
        links = self.daemons[address] = DaemonLinks(address, channel, info)
        return links

    def _append(
        self, added: list[Device], lease: Lease | None, on_detach: Callable[[], None] | None
    ) -> Attachment:
        start = len(self.devices)
        self.devices += added
        self._default_device = self._first_attached()
        attachment = Attachment(self, range(start, start + len(added)), lease, on_detach)
        self.attachments.append(attachment)
        return attachment

    def _attachments_of(self, ordinals: Iterable[int]) -> list[Attachment]:
        wanted = set(ordinals)
        for ordinal in wanted:
            self.device(ordinal)  # cudaErrorInvalidDevice for one not attached
        return [a for a in self.attachments if wanted & set(a)]

    def _watching(self, ordinal: int) -> Callable[[Session], None]:
        def watch(session: Session) -> None:
            with self._watch_lock:
                self._live[ordinal] = session

        return watch

    def _unwatch(self, ordinals: Iterable[int]) -> None:
        with self._watch_lock:
            for ordinal in ordinals:
                self._live.pop(ordinal, None)

    def _watched(self) -> dict[str, tuple[grpc.Channel, list[Session]]]:
        """Each daemon with open sessions: its channel and those sessions (for keepalives)."""
        found: dict[str, tuple[grpc.Channel, list[Session]]] = {}
        with self._watch_lock:
            live = list(self._live.items())
        for ordinal, session in live:
            device = self.devices[ordinal]
            links = self.daemons.get(device.address) if device is not None else None
            if links is not None:
                found.setdefault(links.address, (links.channel, []))[1].append(session)
        return found

    def _first_attached(self) -> int:
        return next(iter(self.attached_ordinals()), 0)


def _get_info(
    channel: grpc.Channel, address: str, timeout: float, wait_for_ready: bool
) -> pb.DaemonInfo:
    """What the daemon at ``address`` says of itself; ConnectError (ConnectionTimeout) when
    it cannot be reached (does not answer) within ``timeout`` seconds."""
    try:
        info: pb.DaemonInfo = pb_grpc.DaemonStub(channel).GetInfo(
            pb.InfoRequest(), timeout=timeout, wait_for_ready=wait_for_ready
        )
    except grpc.RpcError as exc:
        raise translate(exc, "connect", f"daemon {address}") from exc
    return info


def probe(addresses: Sequence[str], timeout: float = PROBE_TIMEOUT_S) -> None:
    """Ask each daemon at ``addresses`` what it has, at once, without waiting for one that
    refuses connections: ConnectError (or ConnectionTimeout) naming the first that does not
    answer. ``gpupool run`` calls this before starting its command."""
    channels = {address: tls_channel(address, GRPC_OPTIONS) for address in addresses}
    try:
        for address, channel in channels.items():
            _get_info(channel, address, timeout, wait_for_ready=False)
    finally:
        for channel in channels.values():
            channel.close()


def _placed(
    lease: Lease, position: int, placement: Placement, devices: Sequence[pb.DeviceProperties]
) -> Device:
    """A device of an allocation: its daemon's properties, with the quota as its memory."""
    if placement.index >= len(devices):
        raise CUDARuntimeError(
            "cudaErrorInvalidDevice",
            f"daemon {placement.address} has no device {placement.index} (restarted smaller?)",
        )
    properties = pb.DeviceProperties()
    properties.CopyFrom(devices[placement.index])
    properties.total_memory = min(properties.total_memory, placement.memory)
    return Device(placement.address, placement.index, properties, lease, position)


_context: Context | None = None
_context_lock = threading.Lock()


def connect(
    addresses: str | Sequence[str] | None = None,
    timeout: float = 10.0,
    transport: str | None = None,
    tls: TLS | None = None,
    lease: Lease | Sequence[Lease] | None = None,
) -> Context:
    """Use the daemons at ``addresses`` (``host:port``, comma-separated or a list), or the
    GPUs of ``lease`` (from :func:`gpupool.client.lease.allocate`; a list of leases gives
    their GPUs one after the other).

    Without either, ``GPUPOOL_ALLOCATION`` names an allocation to use, else
    ``GPUPOOL_DAEMONS`` names daemons. Replaces an earlier connection (``gpupool.attach``
    adds devices instead). ConnectionLost when a daemon does not answer within ``timeout``
    seconds. ``transport`` (else ``GPUPOOL_TRANSPORT``) names the one transport to use:
    ``grpc``, ``tcp``, ``shm`` or ``ucx``; by default the fastest that works. ``tls`` (else
    ``GPUPOOL_TLS_CA``, ...) makes the gRPC channel use TLS.
    """
    owns_lease = False
    leases = [lease] if isinstance(lease, Lease) else list(lease or ())
    if addresses is None and not leases and os.environ.get(ENV_ALLOCATION):
        leases, owns_lease = [attach(os.environ[ENV_ALLOCATION])], True
    if addresses is None:
        addresses = os.environ.get(ENV_DAEMONS, "")
    if isinstance(addresses, str):
        addresses = [part.strip() for part in addresses.split(",") if part.strip()]
    if not addresses and not leases:
        raise GpupoolError(
            f"no daemons: call gpupool.connect('host:port') or set {ENV_DAEMONS}=host:port[,...]"
            f" (or {ENV_ALLOCATION}, from gpupool request)"
        )
    context = Context((), timeout, transport, tls)
    try:
        for held in leases:
            context.attach_lease(held, held.close if owns_lease else None)
        if not leases:
            context.attach_daemons(addresses)
    except BaseException:
        context.close()
        if owns_lease:
            leases[0].close()
        raise
    return adopt(context)


def adopt(context: Context) -> Context:
    """Make ``context`` the process's (``gpupool.attach``'s first one); the one before ends."""
    global _context
    with _context_lock:
        previous, _context = _context, context
    if previous is not None and previous is not context:
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
