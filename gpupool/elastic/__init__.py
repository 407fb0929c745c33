"""Elastic GPUs in a live process: attach devices, use them, detach them, attach others.

Above the client and the scheduler, beside the CLI: it assembles the client's attachments
with the embedded pool (``embedded``), as ``gpupool run -n`` does; ``magics`` gives notebooks
``%gpupool``.

A notebook or a long-lived program starts on CPUs and attaches GPUs as it needs them:
:func:`attach` asks the pool scheduler for a lease (or takes plain daemons) and appends the
devices to the process's ordinals; :func:`detach` ends their sessions and gives the lease back.
Devices attached earlier, and their arrays, streams and modules, are not touched by either.

Ordinals stay put: a detached ordinal is a hole that raises ``cudaErrorInvalidDevice``, and
later attachments append after the highest ordinal the process has used, so no ordinal ever
names two devices (CUDA programs, and the caches kept per ordinal, rely on that). Only when
nothing is attached any more does numbering start again at 0, as in a fresh process.

With no scheduler named (no ``scheduler=``, no ``GPUPOOL_SCHEDULER``), :func:`attach` uses the
embedded pool, as ``gpupool run -n`` does: a scheduler and a daemon of this host, started on
the first such attach and stopped at exit (:func:`local_pool` sets what it serves).
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import time
from collections.abc import Iterable

from gpupool.client import context
from gpupool.client.context import ENV_DAEMONS, AttachedDevice, Attachment, Context
from gpupool.client.lease import ENV_ALLOCATION, ENV_SCHEDULER, allocate
from gpupool.elastic.embedded import EmbeddedPool, PoolSettings
from gpupool.errors import AllocationError, GpupoolError
from gpupool.units import parse_size

DEFAULT_TTL_S = 60.0

_lock = threading.Lock()
_pool: EmbeddedPool | None = None
_pool_settings = PoolSettings()


def attach(
    n: int = 1,
    *,
    fraction: float | None = None,
    memory: int | str | None = None,
    policy: str | None = None,
    same_node: bool = False,
    ttl: float | None = None,
    wait: float | None = None,
    scheduler: str | None = None,
    daemons: str | Iterable[str] | None = None,
) -> Attachment:
    """Attach ``n`` GPUs (each ``fraction`` of one, or ``memory`` bytes such as ``"4GiB"``;
    whole GPUs by default) from the pool and return their ordinals, appended to the
    process's devices. The result is a tuple of ordinals that is also a context manager
    (leaving the block detaches them) and has ``detach()``.

    ``policy`` (``pack`` or ``spread``), ``same_node``, ``ttl`` (seconds, renewed in the
    background while attached; default 60) and ``wait`` (seconds to wait for room; default
    0) are the scheduler's. ``daemons`` attaches every device of plain daemons instead (no
    lease). AllocationError with the scheduler's reason when the request does not fit.
    """
    if daemons is not None:
        addresses = _addresses(daemons)
        with _lock:
            return _context().attach_daemons(addresses)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise AllocationError("INVALID_ARGUMENT", f"n is a number of GPUs, at least 1: {n!r}")
    if ttl is not None and not ttl > 0:
        raise AllocationError("INVALID_ARGUMENT", f"ttl is a number of seconds above 0: {ttl!r}")
    if wait is not None and not wait >= 0:
        raise AllocationError(
            "INVALID_ARGUMENT", f"wait is a number of seconds, 0 or more: {wait!r}"
        )
    embedded = None
    address = scheduler or os.environ.get(ENV_SCHEDULER)
    if not address:
        embedded = _embedded_pool()
        address = embedded.address
    try:
        lease = allocate(
            address,
            n,
            fraction=fraction,
            memory=parse_size(memory) if isinstance(memory, str) else memory,
            policy=policy or "pack",
            same_node=same_node,
            ttl=DEFAULT_TTL_S if ttl is None else ttl,
            wait=wait or 0.0,
        )
    except AllocationError as exc:
        if embedded is None:
            raise
        raise embedded.explain(exc) from None
    try:
        with _lock:
            return _context().attach_lease(lease, lease.release)
    except BaseException:
        lease.release()
        raise


def detach(ordinals_or_attachment: Attachment | int | Iterable[int] | None = None) -> list[int]:
    """Detach ``ordinals_or_attachment`` (an attachment, an ordinal or ordinals: each with
    the rest of its attachment, since a lease is given back whole; everything by default),
    ending those
    sessions at once and releasing their leases. Returns the ordinals detached.

    Their arrays are gone with their sessions; a call on a detached ordinal raises
    ``cudaErrorInvalidDevice``. Once nothing is attached, the next attach starts at 0.
    """
    with _lock:
        found = context.active()
        if found is None:
            return []
        what = ordinals_or_attachment
        chosen = [what] if isinstance(what, int) else what
        detached = found.detach(chosen)
        if not found.attachments:
            context.disconnect()
        return detached


def devices() -> list[AttachedDevice]:
    """What is attached: ordinal, node, daemon, GPU, share, memory, lease and its expiry."""
    found = context.active()
    return [] if found is None else found.attached_devices()


def local_pool(
    backend: str = "auto",
    emu_devices: int = 2,
    emu_memory: int | str = 8 << 30,
    warm: int = 1,
) -> None:
    """Set what the embedded pool serves (``gpupool daemon``'s options of the same names):
    before the first attach without a scheduler, or once nothing is attached from it."""
    global _pool, _pool_settings
    size = parse_size(emu_memory) if isinstance(emu_memory, str) else emu_memory
    settings = PoolSettings(backend, emu_devices, size, warm)
    with _lock:
        if _pool is not None:
            if _pool.settings == settings:
                return
            if _pool_in_use():
                raise GpupoolError("detach the embedded pool's devices before resizing it")
            _pool.stop()
            _pool = None
        _pool_settings = settings


def install_cupy() -> None:
    """Make ``import cupy`` (and ``cupyx``) in this process load ``gpupool.cupy``, as
    ``gpupool run`` does for a whole program; call it before anything imports CuPy."""
    from gpupool.client import import_hook

    loaded = sys.modules.get("cupy")
    if loaded is not None and not getattr(loaded, "__name__", "").startswith("gpupool."):
        raise GpupoolError("CuPy itself is already imported here: call install_cupy() first")
    import_hook.install()


def describe(rows: list[AttachedDevice]) -> list[str]:
    """``devices()`` as lines of text (``%gpupool devices``)."""
    if not rows:
        return ["no devices attached"]
    now = time.time()
    lines = []
    for row in rows:
        held = ""
        if row.allocation is not None and row.expires_at is not None:
            held = f", lease {row.allocation} (expires in {row.expires_at - now:.0f} s)"
        lines.append(
            f"device {row.ordinal}: {row.node} ({row.address}) GPU {row.gpu}, {row.name},"
            f" share {row.share:g}, {row.memory >> 20} MiB{held}"
        )
    return lines


def pool_address() -> str | None:
    """The scheduler ``attach`` uses by default: ``GPUPOOL_SCHEDULER``'s, else the embedded
    pool's once it runs (None before)."""
    named = os.environ.get(ENV_SCHEDULER)
    if named:
        return named
    return _pool.address if _pool is not None else None


def _context() -> Context:
    """The process's context; a new one (with what the environment names) if it has none."""
    found = context.active()
    if found is not None:
        return found
    if os.environ.get(ENV_ALLOCATION) or os.environ.get(ENV_DAEMONS):
        return context.connect()
    return context.adopt(Context())


def _embedded_pool() -> EmbeddedPool:
    global _pool
    with _lock:
        if _pool is None:
            _pool = EmbeddedPool(
                _pool_settings,
                "gpupool.local_pool(emu_devices=N, emu_memory=SIZE) makes it larger"
                " once its devices are detached",
            )
            atexit.register(_stop_pool)
        return _pool


def _pool_in_use() -> bool:
    found = context.active()
    if found is None or _pool is None:
        return False
    return any(
        a.lease is not None and a.lease.scheduler == _pool.address for a in found.attachments
    )


def _stop_pool() -> None:
    global _pool
    context.disconnect()  # the sessions end before the daemon that serves them
    if _pool is not None:
        _pool.stop()
        _pool = None


def _addresses(daemons: str | Iterable[str]) -> list[str]:
    if isinstance(daemons, str):
        daemons = daemons.split(",")
    found = [part.strip() for part in daemons if part.strip()]
    if not found:
        raise GpupoolError("no daemons named")
    return found
