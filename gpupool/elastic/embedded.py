"""The embedded pool: a scheduler and one daemon of this host on loopback, for one program.

What ``gpupool run -n`` allocates from when no scheduler is named, and what ``gpupool.attach``
uses in a process that names none: the same pool a cluster has (leases, grants, quotas, MPS
for fractions), only small. At the CLI's layer: it starts a scheduler and a daemon.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from dataclasses import dataclass

from gpupool.errors import AllocationError, GpupoolError
from gpupool.units import format_size

REGISTER_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class PoolSettings:
    """What the embedded daemon serves (``gpupool daemon``'s options of the same names)."""

    backend: str = "auto"
    emu_devices: int = 2
    emu_memory: int = 8 << 30
    warm: int = 1
    log_level: str = "warning"


class EmbeddedPool:
    """A running embedded pool; :meth:`stop` ends it (its leases with it)."""

    def __init__(self, settings: PoolSettings, larger: str) -> None:
        """``larger`` says how the caller makes the pool larger (its options), for the
        refusals of requests that can never fit it."""
        from gpupool.scheduler.service import start_scheduler
        from gpupool.server.daemon import PoolMembership, start_daemon

        self.settings = settings
        self._larger = larger
        secret = secrets.token_bytes(32)
        self._folder = tempfile.TemporaryDirectory(prefix="gpupool-pool-")
        self._scheduler = start_scheduler(
            "127.0.0.1:0", os.path.join(self._folder.name, "pool.db"), secret
        )
        try:
            self._daemon = start_daemon(
                listen="127.0.0.1:0",
                backend=settings.backend,
                emu_devices=settings.emu_devices,
                emu_memory=settings.emu_memory,
                warm=settings.warm,
                log_level=settings.log_level,
                membership=PoolMembership(self._scheduler.address, "local", secret),
                trusted_emulator=True,  # the user's own pool: unconfined where it must be
            )
        except BaseException:
            self._stop_scheduler()
            raise
        registration = self._daemon.registration
        if registration is None or not registration.registered.wait(REGISTER_TIMEOUT_S):
            self.stop()
            raise GpupoolError("the embedded daemon did not join the embedded scheduler")

    @property
    def address(self) -> str:
        """The scheduler's ``host:port``."""
        return self._scheduler.address

    def describe(self) -> str:
        devices = self._daemon.devices
        memory = format_size(devices[0].total_memory) if devices else "0"
        kind = "emulated GPUs" if self._daemon.backend == "emu" else "GPUs"
        return f"{len(devices)} {kind} of {memory}"

    def explain(self, exc: AllocationError) -> AllocationError:
        """``exc`` with how to make the pool larger, where the request can never fit it."""
        if exc.code != "FAILED_PRECONDITION":
            return exc
        reason = (
            f"{exc.reason} (the embedded pool is this host with {self.describe()}: "
            f"{self._larger}, or name a scheduler)"
        )
        return AllocationError(exc.code, reason)

    def stop(self) -> None:
        self._daemon.stop()
        self._stop_scheduler()

    def _stop_scheduler(self) -> None:
        self._scheduler.stop()
        self._folder.cleanup()
