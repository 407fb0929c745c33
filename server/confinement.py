"""What a worker process may see and do: its environment, its user, its system calls.

Every worker starts with an environment built from an allow-list (:func:`worker_environment`),
so the cluster secret and whatever else the daemon was given never reach a tenant. On the
emulator a tenant's kernel is native code in the worker, so where the daemon runs as root each
emulator worker also confines itself once its backend is open (:func:`confine`): it takes a
user and group of its own (``UID_BASE`` + its pid: unique among live processes, so no two
workers share one and none can signal, trace or read another), no supplementary groups, no
core dumps, ``PR_SET_DUMPABLE`` 0 (its /proc files and memory are root's alone), no new
privileges and the seccomp allow-list of :mod:`gpupool.server.seccomp` (no execve, no ptrace,
no signals but to itself). Kernels are compiled by a separate process under the compiler's
own user (:mod:`gpupool.server.backends.emu_compile_service`), the only writer of the shared
cache that workers load from.

Where that is impossible (not root, no seccomp) :func:`unavailable` says why, and a daemon that
would serve a pool with the emulator refuses unless told the pool is a trusted development
pool (``--trusted-emulator``): see docs/limits.md, "Emulator confinement".
"""

from __future__ import annotations

import ctypes
import importlib
import os
import resource

from gpupool.server import seccomp

# Workers take UID_BASE + pid, the compile service UID_BASE itself (pids start at 1).
ENV_UID_BASE = "GPUPOOL_WORKER_UID_BASE"
DEFAULT_UID_BASE = 0x70000000
ENV_TRUSTED = "GPUPOOL_TRUSTED_EMULATOR"
ENV_CONFINE = "GPUPOOL_EMU_CONFINE"  # 0: do not confine (as if it were impossible)

# Variables a worker keeps from the daemon's environment: paths to its interpreter and
# libraries, locale and time zone, thread counts, the CUDA/CuPy set-up, and the gpupool
# settings a worker reads. Everything else, the cluster secret first, stays with the daemon.
_KEPT = frozenset(
    {
        "PATH", "HOME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "USER", "LOGNAME",
        "PYTHONPATH", "PYTHONHOME", "PYTHONHASHSEED", "PYTHONUNBUFFERED",
        "PYTHONDONTWRITEBYTECODE", "PYTHONFAULTHANDLER", "VIRTUAL_ENV", "LD_LIBRARY_PATH",
        "CXX", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
        "NUMEXPR_NUM_THREADS", "GPUPOOL_CACHE_DIR", "GPUPOOL_EMU_STACK_KIB",
        "GPUPOOL_SHM_SHARE_LIMIT", ENV_UID_BASE,
    }
)  # fmt: skip
_KEPT_PREFIXES = ("LC_", "CUDA_", "CUPY_", "NVIDIA_")


def worker_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """A worker's environment: the allowed part of the daemon's, and ``extra`` (MPS's)."""
    kept = {
        name: value
        for name, value in os.environ.items()
        if name in _KEPT or name.startswith(_KEPT_PREFIXES)
    }
    return {**kept, **(extra or {})}


def uid_base() -> int:
    text = os.environ.get(ENV_UID_BASE, "")
    base = int(text) if text.isdigit() else DEFAULT_UID_BASE
    if not 1000 <= base <= 0xFFFFFFFE - (1 << 22):  # room for every pid (pid_max 2**22)
        raise ValueError(f"{ENV_UID_BASE}={text}: outside 1000..{0xFFFFFFFE - (1 << 22)}")
    return base


def compiler_uid() -> int:
    """The compile service's user (and group): a worker's uid is always above it."""
    return uid_base()


def is_worker_uid(uid: int) -> bool:
    return uid_base() < uid <= uid_base() + (1 << 22)


def unavailable() -> str | None:
    """Why emulator workers cannot be confined here; None when they can."""
    if os.environ.get(ENV_CONFINE, "1") == "0":
        return f"{ENV_CONFINE}=0"
    if os.geteuid() != 0:
        return "the daemon does not run as root, so workers cannot take users of their own"
    return seccomp.unsupported()


def trusted_from_environment() -> bool:
    return os.environ.get(ENV_TRUSTED, "").lower() in ("1", "true", "yes")


def drop_to(uid: int) -> None:
    """Become ``uid`` with the group of the same number and no other groups, for good; no core
    dumps, and not dumpable (so that no other process of the same user can trace it or read
    its memory)."""
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    _set_dumpable(False)


# Modules an emulator worker imports only when a session first needs them (NumPy loads these
# lazily), imported before the worker gives up root: where the interpreter's own files are not
# readable by every user (a Python under /root), a later import would fail.
PRELOAD = ("numpy.random", "numpy.linalg", "numpy.fft", "secrets", "gpupool.server.arrays")


def confine() -> None:
    """Confine this worker process for the rest of its life (see the module's docstring)."""
    for name in PRELOAD:
        importlib.import_module(name)
    drop_to(uid_base() + os.getpid())
    seccomp.install()


_PR_SET_DUMPABLE = 4


def _set_dumpable(dumpable: bool) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_DUMPABLE, int(dumpable), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE)")
