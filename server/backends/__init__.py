"""Backends: the CuPy backend on a GPU, the CPU emulator elsewhere.

The daemon's front process picks one and learns its devices here without importing CuPy
itself: a CUDA context must never live in the front process (design.md, process model), so
the GPU probe runs in a short-lived fresh interpreter.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from gpupool.errors import GpupoolError
from gpupool.logs import fields
from gpupool.server.backends.base import Backend, DeviceInfo

log = logging.getLogger(__name__)

BACKENDS = ("auto", "cupy", "emu")
PROBE_TIMEOUT_S = 120
Translate = Callable[[Exception], Exception]
T = TypeVar("T")


@dataclass(frozen=True)
class BackendConfig:
    """Which backend a daemon runs, and the emulator's shape."""

    kind: str  # "cupy" or "emu", never "auto" once resolved
    emu_devices: int = 2
    emu_memory: int = 8 << 30
    # Emulator workers confine themselves (server/confinement.py) and compile through the
    # daemon's compile service (a connection of their own, WorkerSpec.compile_fd).
    confined: bool = False

    @property
    def idle_worker_memory(self) -> int:
        """Device memory a warm worker takes before any session is its own: a CUDA context
        (about 0.5 GiB on an H100; 1 GiB leaves room for the libraries' handles)."""
        return 1 << 30 if self.kind == "cupy" else 0


def resolve(kind: str, emu_devices: int, emu_memory: int) -> tuple[BackendConfig, list[DeviceInfo]]:
    """The backend ``kind`` names (``auto``: CuPy when it sees a GPU) and its devices."""
    if kind not in BACKENDS:
        raise ValueError(f"unknown backend {kind!r}; choose one of {', '.join(BACKENDS)}")
    if kind in ("auto", "cupy"):
        devices = _probe_gpus() if importlib.util.find_spec("cupy") else []
        if devices:
            return BackendConfig("cupy"), devices
        if kind == "cupy":
            raise RuntimeError(
                "backend cupy: CuPy sees no GPU (install gpupool[gpu] on a GPU host)"
            )
    from gpupool.server.backends.emu import emulated_device

    config = BackendConfig("emu", emu_devices, emu_memory)
    return config, [emulated_device(index, emu_memory) for index in range(emu_devices)]


def open_backend(
    config: BackendConfig,
    device: int,
    ledger_fd: int | None,
    slot: int,
    compile_fd: int | None = None,
) -> tuple[Backend, Translate]:
    """The backend for ``device`` in this worker process, and its error translator.

    ``ledger_fd``, ``slot`` and ``compile_fd`` are the emulator's: the device's shared memory
    ledger, this worker's place in it, and a confined worker's connection to the compile
    service.
    """
    if config.kind == "cupy":
        from gpupool.server.backends import cupy_backend

        return cupy_backend.CupyBackend(device), cupy_backend.translate
    from gpupool.server.backends.emu import EmuBackend, MemoryLedger
    from gpupool.server.backends.emu_compile_service import CompileClient

    assert ledger_fd is not None
    ledger = MemoryLedger.attach(ledger_fd, config.emu_memory)
    compile = None if compile_fd is None else CompileClient(socket.socket(fileno=compile_fd))
    return EmuBackend(device, ledger, slot, compile), _no_translation


def _no_translation(exc: Exception) -> Exception:
    return exc


def translated(translate: Translate, action: Callable[[], T]) -> T:
    """Run a backend action, with the backend library's errors turned into gpupool's."""
    try:
        return action()
    except GpupoolError:
        raise
    except Exception as exc:
        converted = translate(exc)
        if not isinstance(converted, GpupoolError):
            raise
        raise converted from exc


def _probe_gpus() -> list[DeviceInfo]:
    """The GPUs CuPy sees, asked in a fresh interpreter; empty when there are none."""
    probe = subprocess.run(
        [sys.executable, "-m", "gpupool.server.backends.cupy_backend"],
        capture_output=True,
        text=True,
        timeout=PROBE_TIMEOUT_S,
    )
    if probe.returncode != 0:  # no driver, no device, broken install: no GPUs
        log.info("no GPU found", extra=fields(reason=probe.stderr.strip()[-500:]))
        return []
    return [DeviceInfo(**device) for device in json.loads(probe.stdout)]
