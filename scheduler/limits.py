"""The bounds of everything a client or a node may send the scheduler, and the checks.

Every number and string that arrives over the wire is checked here before the state machine
sees it, and again when the store reads it back after a restart: a NaN time-to-live would
never expire, a share that rounds to nothing would be a grant with a quota of 0, a 10 MB
owner would make every ``Pool`` listing fail. Each check returns the reason (naming the
field as the proto spells it) or None; the shell answers a reason with INVALID_ARGUMENT.
docs/limits.md ("Scheduler") lists them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from gpupool.units import format_size

UNITS = 1_000_000  # capacity of one GPU at no oversubscription, in millionths

MAX_COUNT = 1024  # GPUs in one request
MIN_FRACTION = 0.01  # the smallest share: 1% of a GPU (MPS's own granularity)
MIN_UNITS = round(MIN_FRACTION * UNITS)  # every share takes at least this much of its GPU
MIN_MEMORY = 1 << 20  # the smallest memory share (and quota), bytes
MAX_MEMORY = 1 << 50  # 1 PiB: more than any GPU; past it a size is a mistake or an attack
MIN_TTL_S = 1.0
MAX_TTL_S = 7 * 24 * 3600.0  # a week: a lease always ends within this of its last renewal
MAX_WAIT_S = 600.0  # the longest a request may wait in the queue (and hold later ones back)
MAX_QUEUE = 64  # requests waiting at once
MAX_WAITING_PER_TEAM = 4  # of which one team (anonymous callers count as one team)
MAX_TEXT = 256  # characters of an owner, a user, a team, a GPU's name or uuid
MAX_NAME = 253  # a node's name (a DNS name's length)
MAX_ADDRESS = 300  # a node's host:port
MAX_ID = 64  # an allocation id (the scheduler's are 32 hex digits)
MAX_GPUS_PER_NODE = 256
MAX_SESSIONS_PER_GPU = 4096  # in a heartbeat's figures
MAX_OVERSUBSCRIPTION = 64.0
MESSAGE_LIMIT = 1 << 20  # the largest gRPC message the scheduler accepts
BACKENDS = ("", "cupy", "emu")


def text(field: str, value: str, limit: int = MAX_TEXT) -> str | None:
    """Why ``value`` is no good as ``field`` (too long, or with control characters)."""
    if len(value) > limit:
        return f"{field}: at most {limit} characters, not {len(value)}"
    if not value.isprintable():
        return f"{field}: printable characters only (no control characters or newlines)"
    return None


def seconds(field: str, value: float, low: float, high: float) -> str | None:
    """Why ``value`` is no good as a number of seconds in [low, high]."""
    if not math.isfinite(value) or not low <= value <= high:
        return f"{field}: a number of seconds in [{low:g}, {high:g}], not {value!r}"
    return None


def share(count: int, fraction: float | None, memory: int | None) -> str | None:
    """Why a request's count and share are no good."""
    if not 1 <= count <= MAX_COUNT:
        return f"count: a request asks for 1 to {MAX_COUNT} GPUs, not {count}"
    if (fraction is None) == (memory is None):
        return "share: a request names either a fraction or a memory size"
    if fraction is not None and not (math.isfinite(fraction) and MIN_FRACTION <= fraction <= 1):
        # a share that rounds to nothing would be a grant of quota 0 on a GPU shown as free
        return f"fraction: a share of a GPU in [{MIN_FRACTION:g}, 1], not {fraction!r}"
    if memory is not None and not MIN_MEMORY <= memory <= MAX_MEMORY:
        return (
            f"memory: a memory share from {format_size(MIN_MEMORY)} to"
            f" {format_size(MAX_MEMORY)}, not {memory} bytes"
        )
    return None


def allocation_id(value: str) -> str | None:
    if len(value) > MAX_ID:
        return f"id: an allocation id has at most {MAX_ID} characters, not {len(value)}"
    return None


def lease(ttl: float, expires_at: float) -> str | None:
    """Why a stored lease is no good (checked when the store is read back)."""
    return seconds("ttl_s", ttl, MIN_TTL_S, MAX_TTL_S) or (
        None if math.isfinite(expires_at) else f"expires_at: not a time, {expires_at!r}"
    )


def node(
    name: str,
    address: str,
    backend: str,
    oversubscription: float,
    gpus: Iterable[tuple[int, str, str, int]],
) -> str | None:
    """Why a node that asks to register is no good; ``gpus`` are (index, uuid, name, memory)."""
    if not name or not address:
        return "name, address: a node needs a name and an address"
    problem = text("name", name, MAX_NAME) or text("address", address, MAX_ADDRESS)
    if problem:
        return problem
    if backend not in BACKENDS:
        return f"backend: one of {', '.join(b for b in BACKENDS if b)}, not {backend[:40]!r}"
    if not math.isfinite(oversubscription) or not 1 <= oversubscription <= MAX_OVERSUBSCRIPTION:
        return (
            f"oversubscription: at most {MAX_OVERSUBSCRIPTION:g}; an oversubscription factor"
            f" is a number of at least 1, not {oversubscription}"
        )
    listed = list(gpus)
    if len(listed) > MAX_GPUS_PER_NODE:
        return f"gpus: at most {MAX_GPUS_PER_NODE} GPUs a node, not {len(listed)}"
    if len({index for index, *_ in listed}) != len(listed):
        return "gpus: each GPU's index appears once"
    for index, uuid, gpu_name, memory in listed:
        problem = text("gpus.uuid", uuid) or text("gpus.name", gpu_name)
        if problem:
            return problem
        if not 0 < memory <= MAX_MEMORY:
            return f"gpus.memory: GPU {index} of node {name!r} reports no memory ({memory})"
    return None


def figures(gpus: Iterable[tuple[int, int, Iterable[str]]]) -> str | None:
    """Why a heartbeat's figures are no good; ``gpus`` are (index, utilization, sessions)."""
    listed = list(gpus)
    if len(listed) > MAX_GPUS_PER_NODE:
        return f"gpus: at most {MAX_GPUS_PER_NODE} GPUs a node, not {len(listed)}"
    for index, utilization, sessions in listed:
        if utilization > 100:
            return f"gpus.utilization: a percentage, not {utilization} (GPU {index})"
        names = list(sessions)
        if len(names) > MAX_SESSIONS_PER_GPU:
            return f"gpus.sessions: at most {MAX_SESSIONS_PER_GPU} a GPU, not {len(names)}"
        if any(len(each) > MAX_ID for each in names):
            return f"gpus.sessions: allocation ids of at most {MAX_ID} characters"
    return None
