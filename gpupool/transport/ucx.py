"""UCX (``ucx://``) through ucxx, the optional extra ``gpupool[ucx]``.

ucxx's API is asyncio; gpupool's callers are threads. One event loop thread per process
drives every UCX endpoint and listener of the process (client links and a daemon's
listener alike), and :func:`run` lets a thread wait for a coroutine on it. Messages are
ucxx objects tagged by their first byte: ``M`` a serialized message, ``E`` the end of the
sender's messages.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

# ucxx sets a variable that current UCX no longer reads, and UCX warns about it on stderr.
os.environ.setdefault("UCX_WARN_UNUSED_ENV_VARS", "n")

import ucxx

T = TypeVar("T")
MESSAGE = b"M"
END = b"E"

_loop: asyncio.AbstractEventLoop | None = None
_lock = threading.Lock()


def loop() -> asyncio.AbstractEventLoop:
    """The process's UCX event loop, started on first use."""
    global _loop
    with _lock:
        if _loop is None:
            _loop = asyncio.new_event_loop()
            threading.Thread(target=_loop.run_forever, name="ucx", daemon=True).start()
        return _loop


def run(coroutine: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
    """Run ``coroutine`` on the UCX loop and wait for its result (from any other thread).

    TimeoutError (the coroutine cancelled) when it takes longer than ``timeout`` seconds.
    """
    future = asyncio.run_coroutine_threadsafe(coroutine, loop())
    try:
        return future.result(timeout)
    except TimeoutError:
        future.cancel()
        raise


__all__ = ["END", "MESSAGE", "loop", "run", "ucxx"]
