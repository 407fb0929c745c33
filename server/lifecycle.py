"""How long a worker's work may run, and how a worker ends with its front.

A session's worker runs a tenant's kernels and compiles: an endless kernel, or a compile that
never finishes, must not keep a device (or the host's cores) busy for ever, and a worker must
never outlive the front that supervises it (an orphan would serve its session outside lease
enforcement while a restarted daemon hands its memory out again).

- :class:`Limits` — the bounds, from the daemon's options or the environment.
- :func:`die_with` — the worker asks the kernel for SIGKILL when its front ends
  (``PR_SET_PDEATHSIG``), then checks that the front is still its parent (it may have ended
  before the request was made).
- :class:`Watchdog` — the worker's timer over the call it is running. Native code (a
  kernel, NVRTC, the host compiler) cannot be interrupted from Python, so when a call runs
  past its limit the watchdog sends the session its typed error and ends the process; the
  front then kills what the worker left in its process group (a compiler's children).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from gpupool.errors import CompileError, CUDARuntimeError, GpupoolError
from gpupool.logs import fields

log = logging.getLogger(__name__)

ENV_KERNEL_LIMIT = "GPUPOOL_KERNEL_TIME_LIMIT"
ENV_COMPILE_LIMIT = "GPUPOOL_COMPILE_TIME_LIMIT"
ENV_STOP_GRACE = "GPUPOOL_STOP_GRACE"
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Limits:
    """Bounds on a session's work, in seconds.

    ``kernel_s``: the longest one call may keep the device busy (a launch on the emulator,
    which runs it at once; on a GPU the synchronizing call that waits for the work; a whole
    batch) — past it the session gets ``cudaErrorLaunchTimeout`` and ends, as a CUDA context
    does. ``compile_s``: the longest a module may take to compile — past it a
    ``CompileError`` naming the limit, and the session ends. ``stop_grace_s``: how long a
    worker asked to stop (SIGTERM) has before it is killed (SIGKILL).
    """

    kernel_s: float = 600.0
    compile_s: float = 120.0
    stop_grace_s: float = 5.0

    def __post_init__(self) -> None:
        for name in ("kernel_s", "compile_s", "stop_grace_s"):
            value = getattr(self, name)
            if not 0 < value < float("inf"):
                raise ValueError(f"limit {name} is a positive number of seconds, not {value!r}")

    @classmethod
    def from_env(cls, **given: float | None) -> Limits:
        """The limits ``given`` (None: unset), else from the environment, else the defaults."""
        defaults = cls()
        env = {
            "kernel_s": ENV_KERNEL_LIMIT,
            "compile_s": ENV_COMPILE_LIMIT,
            "stop_grace_s": ENV_STOP_GRACE,
        }
        values: dict[str, float] = {}
        for name, variable in env.items():
            value = given.get(name)
            if value is None:
                text = os.environ.get(variable)
                try:
                    value = float(text) if text else getattr(defaults, name)
                except ValueError:
                    raise ValueError(f"{variable}={text!r} is not a number of seconds") from None
            values[name] = value
        return cls(**values)


def die_with(front_pid: int) -> bool:
    """Have this process killed when the thread that started it ends; False when the front
    ``front_pid`` has already gone (this process was handed to another parent)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        log.warning("no parent-death signal", extra=fields(errno=ctypes.get_errno()))
    return os.getppid() == front_pid


class Watchdog:
    """Ends this worker when the call it runs passes its limit, after telling the session.

    ``tell`` sends the session its error (from the watchdog's thread). The worker's loop arms
    the watchdog over a call's execution only (:meth:`arm`, :meth:`disarm`), never while it
    sends a reply, and the watchdog tells only while that call is still the one armed, under
    the lock that :meth:`disarm` takes: the two never write to the connection at once.
    Arming costs an attribute's assignment (a call is microseconds); the thread looks a few
    times a limit.
    """

    def __init__(self, limits: Limits, tell: Callable[[GpupoolError], None], exit_code: int):
        self._limits = limits
        self._tell = tell
        self._exit_code = exit_code
        self._lock = threading.Lock()
        self._timed: tuple[float, bool] | None = None  # (deadline, compiling) of the call
        self._tick = min(1.0, min(limits.kernel_s, limits.compile_s) / 20)
        threading.Thread(target=self._run, name="watchdog", daemon=True).start()

    def arm(self, compiling: bool) -> None:
        """Time what runs from now against the compile limit or the kernel limit."""
        limit = self._limits.compile_s if compiling else self._limits.kernel_s
        self._timed = (time.monotonic() + limit, compiling)

    def disarm(self) -> None:
        """The call has returned (waits while the watchdog is telling the session)."""
        with self._lock:
            self._timed = None

    def _run(self) -> None:
        while True:
            time.sleep(self._tick)
            timed = self._timed
            if timed is None or time.monotonic() < timed[0]:
                continue
            with self._lock:
                if self._timed is timed:  # still that call: the loop is stuck in it
                    self._expire(timed[1])

    def _expire(self, compiling: bool) -> None:
        """Tell the session, then end the process (called holding the lock)."""
        if compiling:
            limit = self._limits.compile_s
            error: GpupoolError = CompileError(
                f"the module did not compile within the daemon's limit of {limit:g} s"
                f" ({ENV_COMPILE_LIMIT}); the session is ended"
            )
        else:
            limit = self._limits.kernel_s
            error = CUDARuntimeError(
                "cudaErrorLaunchTimeout",
                f"the work ran past the daemon's limit of {limit:g} s ({ENV_KERNEL_LIMIT})"
                " and was ended with its session",
            )
        log.info("call past its limit", extra=fields(limit_s=limit, compiling=compiling))
        try:
            self._tell(error)
        except Exception as exc:  # the client is gone: end all the same
            log.debug("limit error not delivered", extra=fields(reason=repr(exc)))
        finally:
            os._exit(self._exit_code)
