"""A pooled daemon's admission rule and lease endings, without sockets; MPS worker settings."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from gpupool import grants
from gpupool.errors import CUDARuntimeError
from gpupool.proto import gpupool_pb2 as pb
from gpupool.server.admission import Admission
from gpupool.server.backends import BackendConfig
from gpupool.server.pool import WorkerPool

SECRET = b"admission-test-secret-0123"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def opening(token: str, device: int = 0, limits: pb.SessionLimits | None = None) -> bytes:
    request = pb.Request(open=pb.OpenSession(device=device, token=token, limits=limits))
    return request.SerializeToString()


def token(allocation: str, fraction: float = 0.5, expires_at: float = 200.0) -> str:
    return grants.sign(grants.Grant(allocation, "n1", 0, 1 << 30, fraction, expires_at), SECRET)


def test_a_bare_daemon_admits_anyone_as_asked() -> None:
    first = opening("")
    assert Admission().admit(first, 0).request == first


def test_the_grants_limits_replace_what_the_client_claimed() -> None:
    admission = Admission("n1", SECRET, Clock(), mps_running=lambda: False)
    claimed = pb.SessionLimits(allocation="mine", memory=1 << 40, fraction=1.0)
    admitted = admission.admit(opening(token("a1"), limits=claimed), 0)
    limits = pb.Request.FromString(admitted.request).open.limits
    assert (limits.allocation, limits.memory, limits.fraction) == ("a1", 1 << 30, 0.5)
    assert admitted.worker_env == {}


def test_fractions_set_the_mps_share_where_mps_runs() -> None:
    admission = Admission("n1", SECRET, Clock(), mps_running=lambda: True)
    assert admission.admit(opening(token("a1", fraction=0.25)), 0).worker_env == {
        "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "25"
    }
    assert admission.admit(opening(token("a2", fraction=1.0)), 0).worker_env == {}


def test_sessions_of_ended_leases_are_ended_and_their_grants_refused() -> None:
    clock = Clock()
    admission = Admission("n1", SECRET, clock, mps_running=lambda: False)
    ended: list[str] = []
    told: list[CUDARuntimeError] = []
    for allocation in ("kept", "dropped"):
        admitted = admission.admit(opening(token(allocation)), 0)
        admission.watch(
            admitted, 0, lambda why, name=allocation: (ended.append(name), told.append(why))
        )
    assert sorted(admission.sessions(0)) == ["dropped", "kept"]
    admission.sync(["kept", "dropped"], asked_at=clock.now)
    clock.now += 1
    late = admission.admit(opening(token("new")), 0)  # granted after the heartbeat left
    admission.watch(late, 0, lambda why: ended.append("new"))
    admission.sync(["kept"], asked_at=clock.now - 0.5)
    assert ended == ["dropped"]  # "new" opened after that heartbeat was asked: it stays
    assert [(why.name, why.detail) for why in told] == [  # what its client is told
        (
            "cudaErrorNotPermitted",
            "allocation dropped was released or has expired: its sessions are ended",
        )
    ]
    admission.sync(["kept"], asked_at=clock.now - 0.5)
    assert ended == ["dropped"]  # each session is ended once
    with pytest.raises(CUDARuntimeError, match="dropped was released or has expired"):
        admission.admit(opening(token("dropped")), 0)
    clock.now = 250.0
    with pytest.raises(CUDARuntimeError, match="expired") as expired:
        admission.admit(opening(token("kept")), 0)
    assert expired.value.name == "cudaErrorNotPermitted"


def test_an_opening_asks_the_scheduler_and_a_released_allocation_opens_nothing() -> None:
    """The scheduler's answer at the opening decides before any heartbeat: False refuses
    (and ends the allocation's open sessions), None (it cannot say) leaves it to the grant."""
    answers: dict[str, bool | None] = {"live": True, "away": None}
    asked: list[str] = []
    admission = Admission("n1", SECRET, Clock(), mps_running=lambda: False)
    admission.check_with(lambda allocation: (asked.append(allocation), answers[allocation])[1])
    ended: list[str] = []
    for allocation in ("live", "away"):
        admitted = admission.admit(opening(token(allocation)), 0)
        admission.watch(admitted, 0, lambda why, name=allocation: ended.append(name))
    assert asked == ["live", "away"]
    answers["live"] = False  # released at the scheduler; no heartbeat since
    with pytest.raises(CUDARuntimeError, match="live was released or has expired") as refused:
        admission.admit(opening(token("live")), 0)
    assert refused.value.name == "cudaErrorNotPermitted"
    assert ended == ["live"]  # its open session is ended too
    asked.clear()
    with pytest.raises(CUDARuntimeError, match="was released"):
        admission.admit(opening(token("live")), 0)
    assert asked == []  # known to have ended: not asked again
    assert admission.sessions(0) == ["away"]


def _environ_once_started(pid: int) -> bytes:
    """A fresh worker's environment: empty until its interpreter is running (a new process
    may still be between fork and exec when it is handed out), so read it again a while."""
    deadline = time.monotonic() + 10
    while True:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
        if environ or time.monotonic() > deadline:
            return environ
        time.sleep(0.02)


def test_a_worker_asked_with_mps_settings_is_fresh_and_has_them() -> None:
    pool = WorkerPool(BackendConfig("emu", 1, 1 << 20), 0, warm=1, log_level="warning")
    try:
        worker = pool.acquire({"CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "50"})
        environ = _environ_once_started(worker.pid).split(b"\0")
        assert b"CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=50" in environ
        warm = pool.acquire()
        assert b"CUDA_MPS" not in _environ_once_started(warm.pid)
        for each in (worker, warm):
            each.kill()
            pool.release(each)
    finally:
        pool.close()
