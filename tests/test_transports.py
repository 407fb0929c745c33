"""Transport choice, TLS, striping and the frame listener, against real daemons on loopback.

The behaviour suite (test_runtime.py) already runs over every transport; these tests cover
what only some transports have.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import gpupool
from gpupool import runtime as rt
from gpupool.proto import gpupool_pb2 as pb
from gpupool.proto.limits import INLINE_LIMIT
from gpupool.server import service
from gpupool.server.daemon import Daemon, start_daemon
from gpupool.tls import TLS, TLSFiles
from gpupool.transport.frames import HEADER, MAX_MESSAGE, MESSAGE, FrameSocket
from gpupool.transport.links import OPENERS
from gpupool.transport.payload import RING_SLOT_SIZE, RING_SLOTS, STRIPE_ALIGN, STRIPE_MIN, split
from tests.conftest import run_client


@pytest.fixture(scope="module")
def emu_daemon() -> Iterator[Daemon]:
    with start_daemon(backend="emu", emu_devices=1, emu_memory=1 << 30) as daemon:
        yield daemon


def round_trip(size: int) -> None:
    """H2D, D2D and D2H of ``size`` random bytes, checked byte for byte."""
    host = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8)
    first, second = rt.malloc(size), rt.malloc(size)
    rt.memcpy(first, host.ctypes.data, size, rt.memcpyHostToDevice)
    rt.memcpy(second, first, size, rt.memcpyDeviceToDevice)
    back = np.empty_like(host)
    rt.memcpy(back.ctypes.data, second, size, rt.memcpyDeviceToHost)
    assert hashlib.sha256(back).digest() == hashlib.sha256(host).digest()
    rt.free(first)
    rt.free(second)


def test_the_daemon_advertises_every_endpoint_fastest_first(emu_daemon: Daemon) -> None:
    ucx = ["ucx"] if "ucx" in OPENERS else []  # where the optional extra is installed
    assert [url.split("://")[0] for url in emu_daemon.endpoints] == ["shm", *ucx, "tcp", "grpc"]
    context = gpupool.connect(emu_daemon.address)
    try:
        rt.memGetInfo()
        assert context.daemons[emu_daemon.address].transport == "shm"  # same host: the fastest
    finally:
        gpupool.disconnect()


def test_a_transport_can_be_named_and_a_missing_one_is_refused(
    emu_daemon: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GPUPOOL_TRANSPORT", "tcp")
    context = gpupool.connect(emu_daemon.address)
    try:
        rt.memGetInfo()
        assert context.daemons[emu_daemon.address].transport == "tcp"
    finally:
        gpupool.disconnect()
    gpupool.connect(emu_daemon.address, transport="carrier-pigeon")
    try:
        with pytest.raises(gpupool.GpupoolError, match="'carrier-pigeon' is not available"):
            rt.memGetInfo()
    finally:
        gpupool.disconnect()


@pytest.mark.parametrize("transport", ["tcp", "shm"])
def test_copies_either_side_of_the_inline_limit_keep_every_byte(
    emu_daemon: Daemon, transport: str
) -> None:
    """Up to INLINE_LIMIT a copy rides inside the message, beyond it beside it."""
    gpupool.connect(emu_daemon.address, transport=transport)
    try:
        for size in (1, INLINE_LIMIT, INLINE_LIMIT + 1):
            round_trip(size)
    finally:
        gpupool.disconnect()


@pytest.mark.parametrize("stripes", ["1", "3"])
def test_striped_copies_of_awkward_sizes_keep_every_byte(
    emu_daemon: Daemon, monkeypatch: pytest.MonkeyPatch, stripes: str
) -> None:
    monkeypatch.setenv("GPUPOOL_STRIPES", stripes)
    gpupool.connect(emu_daemon.address, transport="tcp")
    try:
        for size in (STRIPE_MIN - 1, STRIPE_MIN + 3 * STRIPE_ALIGN + 12345):
            round_trip(size)
    finally:
        gpupool.disconnect()


def test_a_bad_stripe_count_is_refused_by_name(
    emu_daemon: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GPUPOOL_STRIPES", "lots")
    gpupool.connect(emu_daemon.address, transport="tcp")
    try:
        with pytest.raises(gpupool.GpupoolError, match="GPUPOOL_STRIPES='lots'"):
            rt.memGetInfo()
    finally:
        gpupool.disconnect()


def test_the_stripe_split_covers_the_payload_once() -> None:
    for size, count in [(0, 4), (STRIPE_MIN - 1, 4), (STRIPE_MIN, 3), ((256 << 20) + 7, 4)]:
        shares = split(size, count)
        assert sum(n for _, n in shares) == size
        assert all(o == sum(n for _, n in shares[:i]) for i, (o, _) in enumerate(shares))
        assert len(shares) <= count


def test_shared_memory_ring_wraps_around(emu_daemon: Daemon) -> None:
    gpupool.connect(emu_daemon.address, transport="shm")
    try:
        round_trip((RING_SLOTS + 1) * RING_SLOT_SIZE + 1)  # the ring wraps, and a byte more
    finally:
        gpupool.disconnect()


def _tcp_address(daemon: Daemon) -> tuple[str, int]:
    url = next(url for url in daemon.endpoints if url.startswith("tcp://"))
    host, port = url.removeprefix("tcp://").rsplit(":", 1)
    return host, int(port)


def test_strangers_on_the_frame_port_do_not_disturb_the_daemon(emu_daemon: Daemon) -> None:
    address = _tcp_address(emu_daemon)
    with socket.create_connection(address) as garbage:
        garbage.sendall(b"GET / HTTP/1.1\r\n\r\n" * 4)  # not a frame: dropped
        try:
            assert garbage.recv(100) == b""
        except ConnectionResetError:
            pass  # closed with our bytes unread
    with socket.create_connection(address) as stranger:
        frames = FrameSocket(stranger)
        attach = pb.Request(attach=pb.AttachStripe(key=b"guess", stripe=1))
        frames.send(MESSAGE, attach.SerializeToString())
        _kind, message, _ = frames.receive()
        assert pb.Reply.FromString(message).error.name == "cudaErrorInvalidValue"
    with socket.create_connection(address) as wrong_first:
        frames = FrameSocket(wrong_first)
        frames.send(MESSAGE, pb.Request(malloc=pb.Malloc(size=1)).SerializeToString())
        _kind, message, _ = frames.receive()
        assert "must start with 'open'" in pb.Reply.FromString(message).error.message
    with socket.create_connection(address) as greedy:
        frames = FrameSocket(greedy)
        too_many = pb.Request(open=pb.OpenSession(device=0, stripes=1000))
        frames.send(MESSAGE, too_many.SerializeToString())
        _kind, message, _ = frames.receive()
        assert "a session may use 16" in pb.Reply.FromString(message).error.message
    gpupool.connect(emu_daemon.address, transport="tcp")
    try:
        round_trip(1 << 20)
    finally:
        gpupool.disconnect()


def _shm_path(daemon: Daemon) -> str:
    url = next(url for url in daemon.endpoints if url.startswith("shm://"))
    return urlsplit(url).path


def _connect_to(daemon: Daemon, scheme: str) -> socket.socket:
    if scheme == "tcp":
        return socket.create_connection(_tcp_address(daemon))
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.connect(_shm_path(daemon))
    return unix


def _closed_within(sock: socket.socket, seconds: float) -> float:
    """How long until the daemon closes ``sock`` (failing if it takes over ``seconds``)."""
    start = time.monotonic()
    sock.settimeout(seconds)
    try:
        assert sock.recv(100) == b""
    except ConnectionResetError:
        pass
    return time.monotonic() - start


@pytest.mark.parametrize("scheme", ["tcp", "shm"])
def test_a_stranger_cannot_hold_the_front_with_a_huge_or_slow_opening(
    emu_daemon: Daemon, scheme: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A claimed 64 MiB opening is refused at once (the front used to set 64 MiB aside and wait
    for it), and one sent a byte at a time is dropped at the hello deadline, not never."""
    monkeypatch.setattr(service, "OPENING_DEADLINE_S", 1.0)
    with _connect_to(emu_daemon, scheme) as huge:
        huge.sendall(HEADER.pack(MESSAGE, MAX_MESSAGE, 0))
        assert _closed_within(huge, 0.5) < 0.5
    with _connect_to(emu_daemon, scheme) as slow:
        opening = HEADER.pack(MESSAGE, 1000, 0) + bytes(1000)
        slow.settimeout(0.2)
        start = time.monotonic()
        try:
            while time.monotonic() - start < 3:  # one byte each 0.1 s: each recv is quick
                slow.sendall(opening[:1])
                opening = opening[1:]
                time.sleep(0.1)
        except OSError:  # dropped: sending fails
            pass
        assert time.monotonic() - start < 2.5
    gpupool.connect(emu_daemon.address, transport=scheme)
    try:
        round_trip(1 << 20)
    finally:
        gpupool.disconnect()


def test_a_client_that_dies_mid_copy_ends_only_its_session(emu_daemon: Daemon) -> None:
    """Half a payload, then the connection drops: the worker ends and frees its memory."""
    gpupool.connect(emu_daemon.address, transport="tcp")
    try:
        free_before = rt.memGetInfo()[0]
        with socket.create_connection(_tcp_address(emu_daemon)) as quitter:
            frames = FrameSocket(quitter)
            opening = pb.Request(wait=True, open=pb.OpenSession(device=0))
            frames.send(MESSAGE, opening.SerializeToString())
            frames.receive()
            reply = pb.Request(wait=True, malloc=pb.Malloc(size=64 << 20))
            frames.send(MESSAGE, reply.SerializeToString())
            _kind, message, _ = frames.receive()
            ptr = pb.Reply.FromString(message).ptr
            copy = pb.Request(wait=True, memcpy_htod=pb.MemcpyHtoD(dst=ptr, size=64 << 20))
            frames.send(MESSAGE, copy.SerializeToString(), 64 << 20)
            quitter.sendall(bytes(1 << 20))  # and no more
        deadline = time.monotonic() + 10
        while rt.memGetInfo()[0] < free_before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert rt.memGetInfo()[0] >= free_before
        round_trip(1 << 20)
    finally:
        gpupool.disconnect()


@pytest.mark.parametrize("stripes", ["1", "2"])
def test_a_payload_that_cannot_be_sent_ends_the_session_instead_of_hanging(
    emu_daemon: Daemon, stripes: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The host buffer cannot be read (EFAULT) part way into a payload: the client used to wait
    for a reply while the worker waited for the rest of the payload, forever."""
    monkeypatch.setenv("GPUPOOL_TRANSPORT", "tcp")
    monkeypatch.setenv("GPUPOOL_STRIPES", stripes)
    result = run_client(
        """
        import gpupool
        from gpupool import runtime as rt
        size = 16 << 20
        ptr = rt.malloc(size)
        try:
            rt.memcpy(ptr, 4096, size, rt.memcpyHostToDevice)  # no page is mapped there
        except gpupool.ConnectionLost as exc:
            print(exc)
        """,
        emu_daemon.address,
        timeout=20,
    )
    assert "sending to the daemon failed: bad address" in result.stdout, result.stderr
    gpupool.connect(emu_daemon.address, transport="tcp")
    try:
        round_trip(5 << 20)
    finally:
        gpupool.disconnect()


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gpupool test daemon")])
    now = datetime.datetime.now(datetime.UTC)
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "daemon.pem", folder / "daemon.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_grpc_with_tls(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    with start_daemon(
        backend="emu", emu_devices=1, emu_memory=1 << 30, tls=TLSFiles(cert, key)
    ) as daemon:
        assert not any(url.startswith("tcp://") for url in daemon.endpoints)  # no plain text
        gpupool.connect(daemon.address, transport="grpc", tls=TLS(ca=cert))
        try:
            round_trip(5 << 20)
        finally:
            gpupool.disconnect()
        with pytest.raises(gpupool.ConnectionLost, match="cannot reach daemon"):
            gpupool.connect(daemon.address, timeout=1)  # a plain-text client is not answered
        with pytest.raises(gpupool.GpupoolError, match="no tcp:// endpoint"):
            gpupool.connect(daemon.address, transport="tcp", tls=TLS(ca=cert))
            rt.memGetInfo()
        gpupool.disconnect()


def test_grpc_with_client_certificates(tmp_path: Path) -> None:
    """--tls-client-ca: only clients holding a certificate of that CA are answered."""
    cert, key = _self_signed(tmp_path)
    files = TLSFiles(cert, key, client_ca=cert)  # the test's one certificate signs both ends
    with start_daemon(backend="emu", emu_devices=1, emu_memory=1 << 30, tls=files) as daemon:
        gpupool.connect(daemon.address, transport="grpc", tls=TLS(ca=cert, cert=cert, key=key))
        try:
            round_trip(1 << 10)
        finally:
            gpupool.disconnect()
        with pytest.raises(gpupool.ConnectionLost, match="cannot reach daemon"):
            gpupool.connect(daemon.address, timeout=1, tls=TLS(ca=cert))  # no certificate
        # A Unix socket asks for no certificate: only the daemon's own user may use it.
        assert os.stat(_shm_path(daemon)).st_mode & 0o777 == 0o600
    with start_daemon(backend="emu", emu_devices=1, emu_memory=1 << 30) as daemon:
        assert os.stat(_shm_path(daemon)).st_mode & 0o777 == 0o666  # as open as its ports


def test_daemon_tls_options_go_together(tmp_path: Path) -> None:
    cert, _key = _self_signed(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "gpupool.cli", "daemon", "--tls-cert", str(cert)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "--tls-cert and --tls-key go together" in result.stderr
