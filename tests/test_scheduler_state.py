"""The scheduler's decisions, as a pure state machine: events in, instructions out, no sockets."""

from __future__ import annotations

import dataclasses
import itertools

import pytest

from gpupool import grants
from gpupool.errors import CUDARuntimeError
from gpupool.scheduler import state as sm

GiB = 1 << 30
_asks = itertools.count(1)


def node(name: str, gpus: int = 2, memory: int = 8 * GiB, oversubscription: float = 1.0) -> sm.Node:
    return sm.Node(
        name,
        f"{name}:7001",
        tuple(sm.Gpu(i, f"{name}-{i}", "emu", memory) for i in range(gpus)),
        oversubscription,
    )


def pool(*nodes: sm.Node, now: float = 0.0, node_timeout: float = 10.0) -> sm.SchedulerState:
    machine = sm.SchedulerState(node_timeout)
    for each in nodes:
        machine.handle(sm.Register(each, now))
    return machine


def allocate(machine: sm.SchedulerState, now: float = 0.0, **asked: object) -> list[sm.Instruction]:
    request = sm.Request(**{"count": 1, "fraction": 1.0, **asked})  # type: ignore[arg-type]
    return machine.handle(sm.Allocate(next(_asks), request, f"a{next(_asks)}", now))


def granted(instructions: list[sm.Instruction]) -> sm.Allocation:
    replies = [i for i in instructions if isinstance(i, sm.Reply)]
    assert replies, instructions
    assert isinstance(replies[-1].value, sm.Allocation)
    assert any(isinstance(i, sm.StoreAllocation) for i in instructions)  # stored before replied
    return replies[-1].value


def refused(instructions: list[sm.Instruction]) -> sm.Refuse:
    refusals = [i for i in instructions if isinstance(i, sm.Refuse)]
    assert len(refusals) == 1, instructions
    return refusals[0]


def places(allocation: sm.Allocation) -> list[tuple[str, int]]:
    return [(part.node, part.index) for part in allocation.slices]


def test_halves_fill_four_gpus_twice_then_a_third_request_is_told_why() -> None:
    machine = pool(node("a"), node("b"))
    first = granted(allocate(machine, count=4, fraction=0.5))
    second = granted(allocate(machine, count=4, fraction=0.5))
    assert (
        sorted(places(first)) == sorted(places(second)) == [("a", 0), ("a", 1), ("b", 0), ("b", 1)]
    )
    assert {part.memory for part in first.slices} == {4 * GiB}
    third = refused(allocate(machine, count=4, fraction=0.5))
    assert third.code == "RESOURCE_EXHAUSTED"
    assert (
        "cannot fit now: 4 GPUs x 0.5 asked, and 0 of the 4 GPUs up have 0.5 free" in third.reason
    )
    machine.handle(sm.Release(1, first.id, 1.0))
    machine.handle(sm.Release(2, second.id, 1.0))
    assert all(machine.used_units(n, i) == 0 for n in "ab" for i in range(2))


def test_requests_that_can_never_fit_fail_at_once_with_the_reason() -> None:
    machine = pool(node("a"), node("b"))
    too_many = refused(allocate(machine, count=5, wait=60))
    assert too_many.code == "FAILED_PRECONDITION"
    assert "can never fit: 5 GPUs x 1 asked, and the pool has 4 GPUs" in too_many.reason
    one_node = refused(allocate(machine, count=3, same_node=True, wait=60))
    assert "on one node asked, and the largest node has 2 GPUs" in one_node.reason
    too_big = refused(allocate(machine, fraction=None, memory=9 * GiB))
    assert "the pool has 0 GPUs of at least 9GiB (the largest GPU has 8GiB)" in too_big.reason
    assert machine.waiting == 0


@pytest.mark.parametrize(
    ("asked", "problem"),
    [
        ({"count": 0}, "count: a request asks for 1 to 1024 GPUs, not 0"),
        ({"count": 1 << 31}, "count: a request asks for 1 to 1024 GPUs"),
        ({"fraction": 1.5}, "fraction: a share of a GPU in [0.01, 1], not 1.5"),
        ({"fraction": 0.0}, "fraction: a share of a GPU in [0.01, 1], not 0.0"),
        # Critical 1: a share that rounds to nothing was a grant of quota 0
        ({"fraction": 1e-10}, "fraction: a share of a GPU in [0.01, 1], not 1e-10"),
        ({"fraction": float("nan")}, "fraction: a share of a GPU in [0.01, 1], not nan"),
        ({"fraction": None, "memory": 1}, "memory: a memory share from 1MiB"),
        ({"fraction": None, "memory": 1 << 62}, "memory: a memory share from 1MiB to 1024TiB"),
        ({"fraction": None}, "either a fraction or a memory size"),
        ({"policy": "random"}, "policy: unknown policy 'random'"),
        ({"ttl": 0}, "ttl_s: a number of seconds in [1, 604800], not 0"),
        ({"ttl": float("nan")}, "ttl_s: a number of seconds in [1, 604800], not nan"),
        ({"ttl": float("inf")}, "ttl_s: a number of seconds in [1, 604800], not inf"),
        ({"ttl": 1e308}, "ttl_s: a number of seconds in [1, 604800], not 1e+308"),
        ({"wait": float("inf")}, "wait_s: a number of seconds in [0, 600], not inf"),
        ({"wait": float("nan")}, "wait_s: a number of seconds in [0, 600], not nan"),
        ({"wait": -1.0}, "wait_s: a number of seconds in [0, 600], not -1.0"),
        ({"owner": "x" * (10 << 20)}, "owner: at most 256 characters, not 10485760"),
        ({"owner": "me\nforged log line"}, "owner: printable characters only"),
    ],
)
def test_malformed_requests_are_refused_naming_the_problem(
    asked: dict[str, object], problem: str
) -> None:
    refusal = refused(allocate(pool(node("a")), **asked))
    assert refusal.code == "INVALID_ARGUMENT"
    assert problem in refusal.reason


def test_pack_fills_partly_used_gpus_and_spread_prefers_empty_ones_on_other_nodes() -> None:
    machine = pool(node("a"), node("b"))
    first = granted(allocate(machine, fraction=0.25, policy="pack"))
    assert places(first) == [("a", 0)]
    assert places(granted(allocate(machine, fraction=0.25, policy="pack"))) == [("a", 0)]
    assert places(granted(allocate(machine, fraction=0.25, policy="spread"))) == [("a", 1)]
    two = granted(allocate(machine, count=2, fraction=0.25, policy="spread"))
    assert places(two) == [("b", 0), ("a", 1)]  # the emptiest GPU, then another node
    empty = pool(node("a"), node("b"))
    assert {n for n, _ in places(granted(allocate(empty, count=2, policy="spread")))} == {"a", "b"}
    assert {n for n, _ in places(granted(allocate(pool(node("a"), node("b")), count=2)))} == {"a"}


def test_same_node_keeps_an_allocation_on_one_node() -> None:
    machine = pool(node("a", gpus=2), node("b", gpus=3))
    granted(allocate(machine, fraction=0.5, policy="spread"))  # b0 is now half used
    allocation = granted(allocate(machine, count=3, fraction=0.5, same_node=True))
    assert {n for n, _ in places(allocation)} == {"b"}
    refusal = refused(allocate(machine, count=3, fraction=1.0, same_node=True))
    assert "no node up has that many GPUs with 1 free" in refusal.reason


def test_memory_sized_shares_take_their_part_of_each_gpu() -> None:
    machine = pool(node("a", gpus=1, memory=8 * GiB))
    first = granted(allocate(machine, fraction=None, memory=6 * GiB))
    assert first.slices[0].memory == 6 * GiB and first.slices[0].fraction == 0.75
    assert (
        "0 of the 1 GPUs up have 3GiB free"
        in refused(allocate(machine, fraction=None, memory=3 * GiB)).reason
    )
    granted(allocate(machine, fraction=None, memory=2 * GiB))


def test_oversubscription_lets_fractions_sum_past_one() -> None:
    machine = pool(node("a", gpus=1, oversubscription=1.5))
    for _ in range(3):
        granted(allocate(machine, fraction=0.5))
    refused(allocate(machine, fraction=0.5))


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        (node("a", oversubscription=float("nan")), "at least 1, not nan"),
        (node("a", oversubscription=float("inf")), "at least 1, not inf"),
        (node("a", oversubscription=0.5), "at least 1, not 0.5"),
        (node("a", memory=0), "GPU 0 of node 'a' reports no memory"),
        (sm.Node("", "h:1", ()), "needs a name and an address"),
    ],
)
def test_nodes_with_figures_that_would_break_placement_are_refused(bad: sm.Node, why: str) -> None:
    problem = sm.invalid_node(bad)
    assert problem is not None and why in problem
    assert sm.invalid_node(node("a", oversubscription=1.5)) is None


def test_a_waiting_request_gets_freed_capacity_in_arrival_order() -> None:
    machine = pool(node("a", gpus=1))
    holder = granted(allocate(machine, fraction=1.0))
    assert allocate(machine, fraction=0.5, wait=10, now=1.0) == []  # waits
    assert allocate(machine, fraction=0.5, wait=10, now=2.0) == []
    late = refused(allocate(machine, fraction=0.1, now=3.0))  # does not overtake, no wait
    assert "2 earlier request(s) wait" in late.reason
    released = machine.handle(sm.Release(99, holder.id, 4.0))
    replies = [i for i in released if isinstance(i, sm.Reply)]
    assert replies[0].ask == 99  # the release itself, then both waiters
    assert len([r for r in replies if isinstance(r.value, sm.Allocation)]) == 2


def test_a_withdrawn_request_leaves_the_queue() -> None:
    machine = pool(node("a", gpus=1))
    holder = granted(allocate(machine))
    waiting = sm.Allocate(41, sm.Request(1, fraction=1.0, wait=60), "w", 1.0)
    assert machine.handle(waiting) == []
    machine.handle(sm.Withdraw(41))
    assert machine.waiting == 0
    released = machine.handle(sm.Release(42, holder.id, 2.0))
    assert [i for i in released if isinstance(i, sm.Reply)] == [sm.Reply(42, None)]


def test_a_wait_that_runs_out_is_refused_with_the_reason() -> None:
    machine = pool(node("a", gpus=1))
    granted(allocate(machine))
    assert allocate(machine, wait=5.0, now=1.0) == []
    assert not [i for i in machine.handle(sm.Tick(5.9)) if isinstance(i, sm.Refuse)]
    refusal = refused(machine.handle(sm.Tick(6.0)))
    assert refusal.code == "RESOURCE_EXHAUSTED"
    assert "cannot fit now" in refusal.reason and "(waited 5 s)" in refusal.reason
    assert machine.waiting == 0


def test_leases_expire_unless_renewed() -> None:
    machine = pool(node("a", gpus=1), node_timeout=100.0)
    allocation = granted(allocate(machine, ttl=10.0))
    assert allocation.expires_at == 10.0
    renewed = machine.handle(sm.Renew(7, allocation.id, 8.0))
    assert renewed[-1] == sm.Reply(7, machine.allocations[allocation.id])
    assert machine.allocations[allocation.id].expires_at == 18.0
    assert machine.handle(sm.Tick(17.9)) == []
    expired = sm.DeleteAllocation(allocation.id, "expired", "", gpu_seconds=18.0, nodes=("a",))
    assert expired in machine.handle(sm.Tick(18.0))  # a whole GPU held 18 s
    gone = refused(machine.handle(sm.Renew(8, allocation.id, 19.0)))
    assert gone.code == "NOT_FOUND" and "released or its lease expired" in gone.reason
    assert refused(machine.handle(sm.Release(9, allocation.id, 19.0))).code == "NOT_FOUND"


def test_silent_nodes_go_down_take_no_allocation_and_come_back_with_a_heartbeat() -> None:
    machine = pool(node("a", gpus=1), node("b", gpus=1), node_timeout=3.0)
    machine.handle(sm.Heartbeat(1, "a", {}, 2.0))
    down = machine.handle(sm.Tick(3.5))
    assert [i.name for i in down if isinstance(i, sm.NodeDown)] == ["b"]
    assert places(granted(allocate(machine, now=3.6))) == [("a", 0)]
    refusal = refused(allocate(machine, now=3.7))
    assert "0 of the 1 GPUs up have 1 free; down: b" in refusal.reason
    assert allocate(machine, wait=5.0, now=3.8) == []
    back = machine.handle(sm.Heartbeat(2, "b", {}, 4.0))
    assert places(granted(back)) == [("b", 0)]


def test_a_restarted_node_keeps_its_gpus_and_allocations() -> None:
    machine = pool(node("a"))
    allocation = granted(allocate(machine))
    moved = sm.Node("a", "a:7999", node("a").gpus)
    again = machine.handle(sm.Register(moved, 5.0))
    assert len(machine.nodes) == 1 and len(machine.nodes["a"].gpus) == 2
    assert machine.live_allocations("a") == [allocation.id]
    assert machine.allocations[allocation.id].slices[0].address == "a:7999"  # clients follow
    assert sm.StoreAllocation(machine.allocations[allocation.id]) in again
    assert machine.handle(sm.Heartbeat(3, "nobody", {}, 6.0)) == [sm.Reply(3, None)]


def test_a_second_daemon_may_not_take_the_name_of_a_node_that_is_up() -> None:
    machine = pool(node("a"), node_timeout=10.0)
    impostor = sm.Node("a", "a:7999", node("a", gpus=1).gpus)
    taken = machine.name_taken(impostor, 5.0)
    assert taken is not None and "node 'a' is registered from a:7001 and up" in taken
    assert machine.name_taken(node("a"), 5.0) is None  # the same daemon, restarted in place
    assert machine.name_taken(node("b"), 5.0) is None
    machine.handle(sm.Tick(11.0))  # silent: down
    assert machine.name_taken(impostor, 11.0) is None  # a restart elsewhere takes it back


def test_restored_state_gives_leases_a_full_ttl_after_downtime() -> None:
    machine = pool(node("a"))
    allocation = granted(allocate(machine, ttl=10.0))
    restarted = sm.SchedulerState()
    restarted.restore(machine.nodes.values(), machine.allocations.values(), now=30.0)
    assert restarted.allocations[allocation.id].expires_at == 40.0
    assert restarted.used_units("a", 0) == sm.UNITS


SECRET = b"0123456789abcdef0123"


def test_grants_verify_only_genuine_unexpired_and_for_their_device() -> None:
    grant = grants.Grant("alloc", "a", 1, 4 * GiB, 0.5, expires_at=100.0)
    token = grants.sign(grant, SECRET)
    assert grants.verify(token, SECRET, "a", 1, now=99.0) == grant
    assert grants.read(token) == grant
    for token_, node_, device, now, why in [
        (token, "a", 1, 100.0, "expired"),
        (grants.sign(grant, b"another-secret-of-ours"), "a", 1, 0.0, "signature does not match"),
        (token.replace(token[3], "A" if token[3] != "A" else "B", 1), "a", 1, 0.0, "signature"),
        (token, "b", 1, 0.0, "not device 1 of 'b'"),
        (token, "a", 0, 0.0, "not device 0 of 'a'"),
        ("", "a", 1, 0.0, "needs a grant"),
        ("garbage", "a", 1, 0.0, "malformed"),
    ]:
        with pytest.raises(CUDARuntimeError, match=why) as caught:
            grants.verify(token_, SECRET, node_, device, now)
        assert caught.value.name == "cudaErrorNotPermitted"


def test_every_share_holds_at_least_the_minimum_and_never_a_quota_of_nothing() -> None:
    """Critical 1: a share rounding to nothing was granted with quota 0 on a GPU shown free."""
    machine = pool(node("a", gpus=1))
    tiny = granted(allocate(machine, fraction=None, memory=1 << 20))  # 1 MiB of 8 GiB
    assert tiny.slices[0].units == sm.limits.MIN_UNITS  # takes 1% of the GPU, not 128 millionths
    assert tiny.slices[0].memory == 1 << 20
    small_gpu = pool(sm.Node("s", "s:1", (sm.Gpu(0, "u", "emu", 50 << 20),)))
    never = refused(allocate(small_gpu, fraction=0.01))  # 1% of 50 MiB is under 1 MiB
    assert never.code == "FAILED_PRECONDITION"
    for fraction in (1e-10, 0.0099):
        assert refused(allocate(machine, fraction=fraction)).code == "INVALID_ARGUMENT"
    for allocation in machine.allocations.values():
        assert all(p.units >= sm.limits.MIN_UNITS and p.memory > 0 for p in allocation.slices)


def test_team_quotas_are_enforced_with_typed_refusals_and_usage_is_counted() -> None:
    machine = pool(node("a"), node("b"))
    quota = sm.TeamQuota(gpus=1.5, memory=10 * GiB, allocations=2)

    def ask(
        team: str = "ml", limit: sm.TeamQuota | None = quota, **asked: object
    ) -> list[sm.Instruction]:
        request = sm.Request(**{"count": 1, "fraction": 0.5, "team": team, **asked})  # type: ignore[arg-type]
        return machine.handle(sm.Allocate(next(_asks), request, f"q{next(_asks)}", 0.0, limit))

    first = granted(ask(count=2))  # one GPU's worth, 8 GiB of memory quotas
    assert machine.usage("ml") == sm.Usage(sm.UNITS, 8 * GiB, 1)
    over_gpus = refused(ask(count=2))
    assert over_gpus.code == "RESOURCE_EXHAUSTED"
    assert "quota: team 'ml' holds 1 GPUs and asks 1 more" in over_gpus.reason
    over_memory = refused(ask(fraction=None, memory=4 * GiB))
    assert "quota: team 'ml' holds 8GiB and asks 4GiB more" in over_memory.reason
    granted(ask(fraction=0.25))
    over_count = refused(ask(fraction=0.01))
    assert "holds 2 allocation(s), its quota is 2" in over_count.reason
    never = refused(ask(count=4))
    assert never.code == "FAILED_PRECONDITION" and "team 'ml''s quota is 1.5 GPUs" in never.reason
    granted(ask(team="other", limit=None, count=3))  # another team: ml's quota is its own
    assert set(machine.teams()) == {"ml", "other"}
    machine.handle(sm.Release(1, first.id, 10.0, team="ml"))
    assert machine.usage("ml").allocations == 1


def test_another_teams_allocation_cannot_be_renewed_or_released() -> None:
    machine = pool(node("a"))
    request = sm.Request(1, fraction=0.5, team="ml", user="ann")
    mine = granted(machine.handle(sm.Allocate(1, request, "m", 0.0)))
    assert (mine.team, mine.user) == ("ml", "ann")
    for event in (sm.Renew(2, "m", 1.0, team="vision"), sm.Release(3, "m", 1.0, team="")):
        refusal = refused(machine.handle(event))
        assert refusal.code == "PERMISSION_DENIED" and "belongs to team 'ml'" in refusal.reason
    assert "m" in machine.allocations
    granted(machine.handle(sm.Renew(4, "m", 1.0, team="ml")))
    assert machine.handle(sm.Release(5, "m", 1.0, team=None))[-1] == sm.Reply(5, None)


def test_the_queue_is_bounded_and_a_waiting_head_holds_others_back_only_for_its_wait() -> None:
    machine = pool(node("a", gpus=1))
    granted(allocate(machine))  # the GPU is taken
    for _ in range(sm.limits.MAX_WAITING_PER_TEAM):
        assert allocate(machine, wait=600.0) == []  # queued
    full = refused(allocate(machine, wait=600.0))
    assert full.code == "RESOURCE_EXHAUSTED" and "the queue is full" in full.reason
    at_once = refused(allocate(machine, now=100.0, fraction=0.1))
    assert "earlier request(s) wait" in at_once.reason and "within 500 s" in at_once.reason
    machine.handle(sm.Tick(600.0))  # every wait is over: the queue holds nobody back
    assert machine.waiting == 0
    assert refused(allocate(machine, now=600.0, fraction=0.1)).reason.startswith("cannot fit now")
    for wait in (float("inf"), 1e308, 601.0):  # never a wait past the bound
        assert refused(allocate(machine, wait=wait)).code == "INVALID_ARGUMENT"


def test_restore_leaves_out_rows_a_live_request_could_not_have_made() -> None:
    machine = pool(node("a"))
    good = granted(allocate(machine, ttl=60.0))
    forever = dataclasses.replace(good, id="nan", ttl=float("nan"))
    far = dataclasses.replace(good, id="far", ttl=60.0, expires_at=1e308)
    huge = dataclasses.replace(good, id="huge", ttl=1e308)
    nothing = dataclasses.replace(
        good, id="nothing", slices=(dataclasses.replace(good.slices[0], units=0, memory=0),)
    )
    bad_node = node("bad", oversubscription=float("nan"))
    restarted = sm.SchedulerState()
    dropped = restarted.restore(
        [*machine.nodes.values(), bad_node], [good, forever, far, huge, nothing], now=100.0
    )
    assert {key for _, key, _ in dropped} == {"bad", "nan", "huge", "nothing"}
    assert set(restarted.allocations) == {good.id, "far"}
    assert restarted.allocations["far"].expires_at == 160.0  # one ttl from now, no more
    assert all(a.expires_at <= 100.0 + sm.limits.MAX_TTL_S for a in restarted.allocations.values())


def test_node_proofs_are_good_once_for_their_call_and_message_and_not_when_stale() -> None:
    guard = grants.ProofGuard(SECRET)
    message = b"the heartbeat's bytes"
    proof = grants.node_proof("heartbeat", "a", message, SECRET, 100.0, "n1")
    assert guard.check("heartbeat", "a", message, proof, 101.0) is None
    assert "used before" in (guard.check("heartbeat", "a", message, proof, 102.0) or "")  # replay
    fresh = grants.node_proof("heartbeat", "a", message, SECRET, 100.0, "n2")
    for call, name, body, now, why in [
        ("register", "a", message, 101.0, "does not match"),  # another call
        ("heartbeat", "b", message, 101.0, "does not match"),  # another node
        ("heartbeat", "a", message + b"!", 101.0, "does not match"),  # another message
        ("heartbeat", "a", message, 131.0, "more than 30 s"),  # too old
        ("heartbeat", "a", message, 69.0, "more than 30 s"),  # from the future
    ]:
        assert why in (guard.check(call, name, body, fresh, now) or ""), (call, name, now)
    forged = grants.node_proof("heartbeat", "a", message, b"another-secret-of-ours", 100.0, "n3")
    assert "cluster secret" in (guard.check("heartbeat", "a", message, forged, 100.0) or "")
    for garbage in ("", "x", "nan:n:AAAA", "1:2:3:4"):
        assert guard.check("heartbeat", "a", message, garbage, 100.0) is not None
    assert guard.check("heartbeat", "a", message, fresh, 101.0) is None  # unused until now


def test_a_later_request_goes_ahead_only_onto_gpus_no_waiting_request_could_use() -> None:
    big = sm.Node("big", "big:1", (sm.Gpu(0, "b", "H100", 80 * GiB),))
    small = sm.Node("small", "small:1", (sm.Gpu(0, "s", "T4", 16 * GiB),))
    machine = pool(big, small)
    granted(allocate(machine, fraction=None, memory=60 * GiB))  # the big GPU is mostly taken
    assert allocate(machine, fraction=None, memory=40 * GiB, wait=600.0) == []  # waits: big only
    beside = granted(allocate(machine, fraction=None, memory=4 * GiB))  # the small GPU: no delay
    assert places(beside) == [("small", 0)]
    behind = refused(allocate(machine, fraction=None, memory=10 * GiB, count=2))
    assert "1 earlier request(s) wait" in behind.reason  # it would need the big GPU too
    assert machine.waiting == 1
