"""Real daemons on loopback (port 0), one per backend, and clients connected to them.

Every behaviour test that takes ``daemon`` runs once on the CPU emulator and once on a GPU
(the ``gpu`` mark), which is skipped cleanly where CuPy sees no GPU. No CUDA context is made
in the test process: the daemon probes and runs the GPU in its worker processes. Every test
that takes ``connected`` runs once over each transport (``ucx`` is skipped where the
optional extra is not installed); client programs it starts use the same transport.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import subprocess
import sys
import textwrap
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prometheus_client.parser import text_string_to_metric_families

import gpupool
from gpupool.proto import gpupool_pb2 as pb
from gpupool.server.daemon import Daemon, start_daemon
from gpupool.server.executor import SessionExecutor, as_replies
from gpupool.transport.links import ENV_TRANSPORT, OPENERS

EMU_MEMORY = 2 << 30


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--run-slow", action="store_true", help="also run the full fuzz, load and soak runs"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``slow`` tests (the full hostile runs) only on demand; CI runs their bounded versions."""
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="a full fuzz/load/soak run: python -m pytest --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


GPUPOOL = [sys.executable, "-m", "gpupool.cli"]  # the `gpupool` command, as a user runs it


@pytest.fixture(scope="session", autouse=True)
def _kernel_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Compiled emulator kernels go to a folder of this test run (workers inherit it)."""
    os.environ["GPUPOOL_CACHE_DIR"] = str(tmp_path_factory.mktemp("kernel-cache"))


@pytest.fixture(scope="module", params=["emu", pytest.param("cupy", marks=pytest.mark.gpu)])
def daemon(request: pytest.FixtureRequest) -> Iterator[Daemon]:
    """A daemon of the parametrized backend, for the tests of one module."""
    try:
        started = start_daemon(backend=request.param, emu_devices=2, emu_memory=EMU_MEMORY)
    except RuntimeError as exc:
        pytest.skip(f"no {request.param} backend here: {exc}")
    yield started
    started.stop()


TRANSPORTS = [
    "grpc",
    "tcp",
    "shm",
    pytest.param(
        "ucx",
        marks=pytest.mark.skipif(
            "ucx" not in OPENERS, reason="ucx: install the extra gpupool[ucx] (ucxx)"
        ),
    ),
]


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The transport of this test's sessions, for this process and the clients it starts."""
    monkeypatch.setenv(ENV_TRANSPORT, request.param)
    return str(request.param)


@pytest.fixture
def connected(daemon: Daemon, transport: str) -> Iterator[Daemon]:
    """This process's client connected to ``daemon``; its sessions end after the test."""
    context = gpupool.connect(daemon.address)
    yield daemon
    used = {links.transport for links in context.daemons.values()} - {None}
    gpupool.disconnect()
    assert used <= {transport}, f"sessions used {used}, not {transport}"


def require_devices(count: int) -> None:
    """Skip where the connected daemon has fewer devices (a machine with one GPU, say)."""
    from gpupool import runtime

    if runtime.getDeviceCount() < count:
        pytest.skip(f"needs {count} devices")


def run_client(code: str, daemons: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run a client program in its own process, as a user's program would run."""
    env = dict(os.environ, GPUPOOL_DAEMONS=daemons)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_request(executor: SessionExecutor, **call: object) -> list[pb.Reply]:
    """The replies to one call made straight to an executor (no sockets), device data in
    chunks as a message transport sends it. ``wait`` defaults to True."""
    wait = bool(call.pop("wait", True))
    items = executor.handle(pb.Request(wait=wait, **call))  # type: ignore[arg-type]
    return [reply for item in items for reply in as_replies(item)]


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost, and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gpupool test")])
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


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    """Every sample of ``url``/metrics, keyed by name and labels."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def compilers_of(uid: int) -> list[int]:
    """The pids of compiler processes (cc1, cc1plus) running as ``uid``: where emulator
    workers are confined, the daemon's compile service runs them, not the worker."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        if fields.get("Name", "").startswith("cc1") and fields["Uid"].split()[0] == str(uid):
            found.append(int(entry.name))
    return found


@pytest.fixture(scope="module")
def unconfined_workers() -> Iterator[None]:
    """Daemons started by the module run their emulator workers unconfined, as a trusted
    development pool's (docs/limits.md). For the peer links, which a confined worker (no
    sockets of its own) cannot dial yet, and for gpupool.torch, whose lazy imports a confined
    worker cannot make where the interpreter lies in a folder only root may read (as here,
    under /root)."""
    from gpupool.server.confinement import ENV_CONFINE, ENV_TRUSTED

    unconfined = {ENV_CONFINE: "0", ENV_TRUSTED: "1"}
    saved = {name: os.environ.get(name) for name in unconfined}
    os.environ.update(unconfined)
    yield
    for name, value in saved.items():
        if value is None:
            del os.environ[name]
        else:
            os.environ[name] = value
