"""Ctrl-C during a call: the call finishes, then the program gets its KeyboardInterrupt.

A session's stream is a protocol: a reply half read, a payload half sent or a frame cut in
two leaves both ends out of step, and every later call (and every array) is lost. So while
the main thread is inside a call on a session (a copy, a synchronize, a malloc, a compile,
sending a batch), SIGINT is only noted; the call runs to its end (its reply read, its payload
drained) and the interrupt is raised as it returns. Each wait in a call is bounded (the
session's liveness timeout), so the interrupt always comes.

A second SIGINT in the same call does not wait: it is raised at once, and the session it
cut short is abandoned (its later calls raise ConnectionLost saying so), the other sessions
going on. This is for a call that is stuck; the first press is the one that keeps everything.

SIGINT reaches Python handlers in the main thread only, so calls from other threads need
nothing. The handler is installed on the first call and stays; outside calls it hands the
signal to the handler it replaced (Python's, by default: a KeyboardInterrupt where the
program is). Where the program (or IPython, for each cell) installs its own handler again,
the next call puts this one back in front of it.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # CPython's own: signal.py wraps it
import signal
import threading
from collections.abc import Callable
from threading import get_ident
from types import FrameType
from typing import Any

# signal.getsignal wraps its answer in an enum (about 7 us); the C function it calls does
# not (0.1 us), and this runs at every call that talks to a daemon.
_getsignal: Callable[[int], Any] = _signal.getsignal
_SIGINT = int(signal.SIGINT)
_MAIN = threading.main_thread().ident
_depth = 0  # calls the main thread is inside (they nest: a read makes a call)
_pending = 0  # SIGINTs noted during the current outermost call
_previous: Any = signal.default_int_handler  # the handler this one stands in front of


class Abandoned(KeyboardInterrupt):
    """A second Ctrl-C cut a call short: its session is unusable (a KeyboardInterrupt)."""


def _handler(signum: int, frame: FrameType | None) -> None:
    global _pending
    if _depth == 0:
        _forward(signum, frame)
        return
    _pending += 1
    if _pending > 1:  # pressed again: the user would rather lose the session than wait
        raise Abandoned("interrupted twice during a call: its session was abandoned")


def _forward(signum: int, frame: FrameType | None) -> None:
    previous = _previous
    if callable(previous):
        previous(signum, frame)
    elif previous == signal.SIG_DFL:
        signal.default_int_handler(signum, frame)
    # SIG_IGN: ignored, as before


def _install() -> None:
    global _previous
    try:
        current = _getsignal(_SIGINT)
        if current is not _handler:
            signal.signal(signal.SIGINT, _handler)
            _previous = current
    except ValueError:  # not the main interpreter's main thread
        pass


class _Held:
    """Hold SIGINT for the block (a call's protocol exchange); raise it when the outermost
    block ends, whether it returns or raises (the interrupt then wins, chained to the
    call's own error)."""

    __slots__ = ()

    def __enter__(self) -> None:
        global _depth, _pending
        if get_ident() != _MAIN:
            return
        if _depth == 0:
            _install()
            _pending = 0
        _depth += 1

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        global _depth, _pending
        if get_ident() != _MAIN:
            return
        _depth -= 1
        if _depth == 0 and _pending:
            _pending = 0
            if kind is None or not issubclass(kind, KeyboardInterrupt):  # not raised already
                _forward(signal.SIGINT, None)


held = _Held()


def in_call() -> bool:
    """True while the main thread is inside a call (tests wait for this to interrupt one)."""
    return _depth > 0
