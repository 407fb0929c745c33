"""Who may use the pool, on loopback: API tokens and team quotas through the admin commands,
TLS and client certificates on the scheduler, node messages that cannot be replayed, releases
that take effect on the daemons at once, and the bounds on what a client sends.

Each test starts its own scheduler (its state file in the test's folder) and, where sessions
are opened, one emulated daemon of one small device.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from gpupool import grants
from gpupool.client.context import DaemonLinks
from gpupool.client.lease import SchedulerClient, allocate
from gpupool.client.session import Session
from gpupool.errors import AllocationError, ConnectionLost, CUDARuntimeError
from gpupool.proto import gpupool_pb2 as pb
from gpupool.proto import gpupool_pb2_grpc as pb_grpc
from gpupool.proto import scheduler_pb2 as spb
from gpupool.proto import scheduler_pb2_grpc as spb_grpc
from gpupool.proto.limits import GRPC_OPTIONS
from gpupool.scheduler.service import Scheduler, start_scheduler
from gpupool.server.admission import Admission
from gpupool.server.daemon import Daemon, PoolMembership, start_daemon
from gpupool.server.registration import Registration, node_registration
from gpupool.tls import TLSFiles
from tests.test_pool import eventually, gpupool_cli
from tests.test_scheduler_faults import SchedulerProcess
from tests.test_transports import _self_signed

SECRET = b"security-test-secret-0123456789"
GiB = 1 << 30


def join(scheduler: Scheduler, name: str = "n") -> Daemon:
    daemon = start_daemon(
        backend="emu",
        emu_devices=1,
        emu_memory=GiB,
        log_level="warning",
        membership=PoolMembership(scheduler.address, name, SECRET),
    )
    assert daemon.registration is not None
    assert daemon.registration.registered.wait(10), daemon.registration.refused
    return daemon


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No token or TLS settings from the environment the tests run in."""
    for name in ("GPUPOOL_TOKEN", "GPUPOOL_TLS_CA", "GPUPOOL_TLS_CERT", "GPUPOOL_TLS_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(grants.ENV_SECRET, SECRET.decode())
    return monkeypatch


@pytest.fixture
def tokened(tmp_path: Path, env: pytest.MonkeyPatch) -> Iterator[tuple[Scheduler, str]]:
    """A scheduler that requires tokens, with one node; yields it and its state file."""
    db = str(tmp_path / "scheduler.db")
    scheduler = start_scheduler("127.0.0.1:0", db, SECRET, heartbeat_s=0.5, require_tokens=True)
    daemon = join(scheduler)
    yield scheduler, db
    daemon.stop()
    scheduler.stop()


def made_token(db: str, team: str, user: str) -> str:
    made = gpupool_cli("token", "create", "--db", db, "--team", team, "--user", user)
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert token.startswith("gpt_") and "shown only now" in made.stderr
    return token


def test_tokens_are_required_made_hashed_listed_and_revoked(
    tokened: tuple[Scheduler, str],
) -> None:
    scheduler, db = tokened
    for token, why in (("", "requires an API token"), ("gpt_forged_x", "unknown or revoked")):
        with pytest.raises(AllocationError, match=why) as refused:
            SchedulerClient(scheduler.address, token).pool()
        assert refused.value.code == "UNAUTHENTICATED"
    token = made_token(db, "ml", "ann")
    # hashed at rest; read by another process: closing a file the scheduler's SQLite has
    # open, in its own process, would drop SQLite's locks (POSIX locks are per process)
    secret = token.removeprefix("gpt_").partition("_")[2]
    assert subprocess.run(["grep", "-qF", secret, db, f"{db}-wal"]).returncode == 1
    client = SchedulerClient(scheduler.address, token)
    request = spb.AllocationRequest(count=1, fraction=0.5, ttl_s=30, owner="ann@host")
    allocation = client.allocate(request)
    assert (allocation.team, allocation.user) == ("ml", "ann")
    other = SchedulerClient(scheduler.address, made_token(db, "vision", "bob"))
    with pytest.raises(AllocationError, match="belongs to team 'ml'") as theirs:
        other.release(allocation.id)  # the id alone is not enough: the team must match
    assert theirs.value.code == "PERMISSION_DENIED"
    listing = gpupool_cli("token", "list", "--db", db)
    token_id = token.split("_")[1]
    assert token_id in listing.stdout and "ann" in listing.stdout
    revoked = gpupool_cli("token", "revoke", token_id, "--db", db)
    assert revoked.returncode == 0, revoked.stderr
    with pytest.raises(AllocationError, match="unknown or revoked"):
        client.renew(allocation.id)  # refused from the next call on
    assert gpupool_cli("token", "revoke", token_id, "--db", db).returncode == 1
    print(f"tried: no token, a forged one, another team's release, a revoked token ({token_id})")


def test_team_quotas_are_enforced_and_usage_shows_in_list_and_smi(
    tokened: tuple[Scheduler, str],
) -> None:
    scheduler, db = tokened
    token = made_token(db, "ml", "ann")
    quota = gpupool_cli("team", "quota", "ml", "--gpus", "0.5", "--allocations", "1", "--db", db)
    assert quota.returncode == 0 and "0.5 GPUs, 1 allocations" in quota.stdout, quota.stderr
    os.environ["GPUPOOL_TOKEN"] = token  # allocate() reads it, as programs do
    try:
        with pytest.raises(AllocationError, match=r"team 'ml''s quota is 0\.5 GPUs") as never:
            allocate(scheduler.address, 1, fraction=1.0)
        assert never.value.code == "FAILED_PRECONDITION"
        lease = allocate(scheduler.address, 1, fraction=0.25, ttl=30)
        with pytest.raises(AllocationError, match="quota: team 'ml' holds 1 allocation") as over:
            allocate(scheduler.address, 1, fraction=0.25)
        assert over.value.code == "RESOURCE_EXHAUSTED"
        shown = {
            command: gpupool_cli(command, "--scheduler", scheduler.address, env={})
            for command in ("list", "smi")
        }
        for command, result in shown.items():
            assert result.returncode == 0, result.stderr
            row = next(line for line in result.stdout.splitlines() if line.startswith("│ ml "))
            assert "0.25 / 0.5" in row and "1 / 1" in row, (command, row)
        assert "ml/ann" in shown["smi"].stdout
        lease.release()
        teams = gpupool_cli("team", "list", "--db", db)
        assert "0.5 GPUs, 1 allocations" in teams.stdout
    finally:
        del os.environ["GPUPOOL_TOKEN"]
    without = gpupool_cli("list", "--scheduler", scheduler.address)
    assert without.returncode == 1 and "requires an API token" in without.stderr


def test_the_scheduler_command_requires_tokens_when_told(
    tmp_path: Path, env: pytest.MonkeyPatch
) -> None:
    scheduler = SchedulerProcess(tmp_path / "scheduler.db", 0, "--require-tokens")
    try:
        assert "API tokens required" in scheduler.said
        with pytest.raises(AllocationError, match="requires an API token"):
            SchedulerClient(scheduler.address).pool()
    finally:
        scheduler.stop()


def test_an_open_scheduler_serves_callers_without_a_token_but_not_with_a_bad_one(
    tmp_path: Path, env: pytest.MonkeyPatch
) -> None:
    db = str(tmp_path / "scheduler.db")
    with start_scheduler("127.0.0.1:0", db, SECRET) as scheduler:
        assert SchedulerClient(scheduler.address).pool() is not None
        with pytest.raises(AllocationError, match="unknown or revoked"):
            SchedulerClient(scheduler.address, "gpt_nobody_x").pool()


def opener(address: str) -> tuple[grpc.Channel, DaemonLinks]:
    channel = grpc.insecure_channel(address, GRPC_OPTIONS)
    info = pb_grpc.DaemonStub(channel).GetInfo(pb.InfoRequest(), timeout=10)
    return channel, DaemonLinks(address, channel, info)


def test_a_release_takes_effect_on_the_daemon_at_once(
    tmp_path: Path, env: pytest.MonkeyPatch
) -> None:
    """Heartbeats every 5 s: a released allocation's grant opens nothing right after the
    release, and its open session ends within a fraction of that interval."""
    db = str(tmp_path / "scheduler.db")
    scheduler = start_scheduler("127.0.0.1:0", db, SECRET, node_timeout=20, heartbeat_s=5)
    daemon = join(scheduler)
    try:
        lease = allocate(scheduler.address, 1, fraction=0.5, ttl=60)
        placement = lease.placements[0]
        channel, links = opener(placement.address)
        session = Session(links.open("grpc", 10), placement.index, token=placement.grant)
        session.call(pb.Request(malloc=pb.Malloc(size=1024)))
        time.sleep(1.0)  # a heartbeat is held by the scheduler now
        released = time.monotonic()
        lease.release()
        with pytest.raises(CUDARuntimeError, match="was released or has expired") as refused:
            Session(links.open("grpc", 10), placement.index, token=placement.grant)
        assert refused.value.name == "cudaErrorNotPermitted"
        refused_after = time.monotonic() - released

        def ended() -> bool:
            try:
                session.call(pb.Request(malloc=pb.Malloc(size=1024)))
            except (CUDARuntimeError, ConnectionLost):
                return True
            return False

        ended_after = eventually(ended, within=4) + refused_after
        print(
            f"after release: new session refused in {refused_after:.2f} s, open one ended in"
            f" {ended_after:.2f} s (heartbeats every 5 s)"
        )
        assert ended_after < 4  # not the next heartbeat, 5 s away
        channel.close()
        assert daemon.registration is not None
        stopping = time.monotonic()
        daemon.registration.stop()  # a heartbeat is held: stopping does not wait for it
        assert time.monotonic() - stopping < 1
    finally:
        daemon.stop()
        scheduler.stop()


def test_while_the_scheduler_is_away_a_genuine_grant_alone_opens_a_session(
    tmp_path: Path, env: pytest.MonkeyPatch
) -> None:
    """The documented fallback: no answer, no refusal, and no wait at each opening."""
    db = str(tmp_path / "scheduler.db")
    scheduler = start_scheduler("127.0.0.1:0", db, SECRET, node_timeout=20, heartbeat_s=0.5)
    daemon = join(scheduler)
    try:
        lease = allocate(scheduler.address, 1, fraction=0.5, ttl=60)
        lease.close()  # stop renewing: the scheduler goes away
        placement = lease.placements[0]
        scheduler.stop()
        assert daemon.registration is not None
        eventually(lambda: not daemon.registration.reachable, within=10)  # type: ignore[union-attr]
        channel, links = opener(placement.address)
        started = time.monotonic()
        session = Session(links.open("grpc", 10), placement.index, token=placement.grant)
        opened_in = time.monotonic() - started
        assert session.properties.total_memory == GiB // 2
        session.close()
        channel.close()
        asked = time.monotonic()
        assert daemon.registration.allocation_live(lease.id) is None  # it cannot say...
        assert time.monotonic() - asked < 0.5  # ...and does not wait the check's 2 s to say so
        print(f"scheduler away: a genuine grant opened a session in {opened_in:.2f} s")
    finally:
        daemon.stop()
        scheduler.stop()


def recorder(send: Any, into: list[Any]) -> Any:
    def recording(message: Any, *args: Any, **kwargs: Any) -> Any:
        into.append(message)
        return send(message, *args, **kwargs)

    return recording


def test_a_captured_heartbeat_or_registration_replayed_is_refused(
    tmp_path: Path, env: pytest.MonkeyPatch
) -> None:
    """The daemon's own registration thread (a node of no GPUs here) sends its messages
    through a recorder, as a listener on the wire would see them; sent again, each is
    refused, and so is one whose body was changed; the node goes on."""
    db = str(tmp_path / "scheduler.db")
    scheduler = start_scheduler("127.0.0.1:0", db, SECRET, heartbeat_s=0.3)
    node = node_registration("n", "127.0.0.1:1", "emu", [], 1.0)
    registration = Registration(scheduler.address, node, [], [], Admission("n", SECRET), SECRET)
    captured: dict[str, list[Any]] = {"Register": [], "Heartbeat": []}
    stub = registration._stub  # not the API: the test's tap on what the daemon sends
    for call in captured:
        setattr(stub, call, recorder(getattr(stub, call), captured[call]))
    registration.start()
    channel = grpc.insecure_channel(scheduler.address, GRPC_OPTIONS)
    try:
        assert registration.registered.wait(10), registration.refused
        eventually(lambda: len(captured["Heartbeat"]) >= 2 and registration.reachable, within=10)
        spy = spb_grpc.SchedulerStub(channel)
        heartbeat = captured["Heartbeat"][-1]
        tampered = spb.NodeHeartbeat()
        tampered.CopyFrom(heartbeat)
        tampered.gpus.add(index=0, memory_used=1)
        replays = {
            "a replayed registration": (spy.Register, captured["Register"][-1]),
            "a replayed heartbeat": (spy.Heartbeat, heartbeat),
            "a heartbeat with another body": (spy.Heartbeat, tampered),
        }
        for what, (send, message) in replays.items():
            with pytest.raises(grpc.RpcError) as refused:
                send(message, timeout=10)
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED, what
            print(f"{what}: refused, {refused.value.details()}")
        beats = len(captured["Heartbeat"])
        eventually(lambda: len(captured["Heartbeat"]) > beats + 1, within=10)
        assert registration.reachable and registration.refused == ""  # the node goes on
    finally:
        channel.close()
        registration.stop()
        scheduler.stop()


def test_the_scheduler_serves_tls_and_requires_client_certificates_with_a_client_ca(
    tmp_path: Path, env: pytest.MonkeyPatch
) -> None:
    cert, key = _self_signed(tmp_path)
    files = TLSFiles(cert, key, client_ca=cert)  # the one certificate signs both ends
    db = str(tmp_path / "scheduler.db")
    with start_scheduler("127.0.0.1:0", db, SECRET, heartbeat_s=0.3, tls=files) as scheduler:
        refusals = {}
        for what, variables in {
            "plain text": {},
            "TLS without a client certificate": {"GPUPOOL_TLS_CA": str(cert)},
        }.items():
            for name, value in variables.items():
                env.setenv(name, value)
            with pytest.raises(AllocationError, match="does not answer") as refused:
                SchedulerClient(scheduler.address).pool()
            refusals[what] = refused.value.code
        env.setenv("GPUPOOL_TLS_CERT", str(cert))
        env.setenv("GPUPOOL_TLS_KEY", str(key))
        daemon = join(scheduler)  # the daemon registers over TLS, with its certificate
        try:
            with allocate(scheduler.address, 1, fraction=0.5, ttl=30) as lease:
                assert lease.placements[0].node == "n"
        finally:
            daemon.stop()
    print(f"refused: {refusals}; with the CA and a certificate: registered and allocated")
    bad = gpupool_cli("scheduler", "--tls-cert", str(cert), "--db", db)
    assert bad.returncode == 2 and "--tls-cert and --tls-key go together" in bad.stderr


def test_what_a_client_sends_is_bounded_and_a_huge_owner_harms_nobody(
    tmp_path: Path, env: pytest.MonkeyPatch
) -> None:
    """Issue 11, items 1 and 8, over the wire: each gets INVALID_ARGUMENT naming its field,
    a 10 MB owner is refused before it is parsed, and the pool goes on for everyone."""
    db = str(tmp_path / "scheduler.db")
    with start_scheduler("127.0.0.1:0", db, SECRET, heartbeat_s=0.3) as scheduler:
        daemon = join(scheduler)
        client = SchedulerClient(scheduler.address)
        try:
            cases = {
                "fraction": spb.AllocationRequest(count=1, fraction=1e-10, ttl_s=30),
                "ttl_s": spb.AllocationRequest(count=1, fraction=0.5, ttl_s=float("nan")),
                "wait_s": spb.AllocationRequest(count=1, fraction=0.5, ttl_s=30, wait_s=1e308),
                "count": spb.AllocationRequest(count=1 << 31, fraction=0.5, ttl_s=30),
                "owner": spb.AllocationRequest(count=1, fraction=0.5, ttl_s=30, owner="x" * 300),
            }
            for field, request in cases.items():
                with pytest.raises(AllocationError) as refused:
                    client.allocate(request)
                assert refused.value.code == "INVALID_ARGUMENT", field
                assert refused.value.reason.startswith(f"{field}: "), refused.value.reason
            with pytest.raises(AllocationError, match="id: an allocation id"):
                client.renew("x" * 100)
            huge = spb.AllocationRequest(count=1, fraction=0.5, ttl_s=30, owner="x" * (10 << 20))
            with pytest.raises(AllocationError) as too_big:
                client.allocate(huge)
            assert too_big.value.code == "RESOURCE_EXHAUSTED"  # gRPC's own message limit
            assert "larger than max" in too_big.value.reason
            state = client.pool()  # everyone's listing still works
            assert len(state.gpus) == 1 and not state.allocations
            with allocate(scheduler.address, 1, fraction=0.5, ttl=30) as lease:
                assert lease.placements[0].memory == GiB // 2
        finally:
            client.close()
            daemon.stop()
