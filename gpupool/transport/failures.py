"""A transport's own errors, translated into gpupool's in one place (as httpx does).

Sockets raise ``OSError`` (and ``TimeoutError``), gRPC raises ``grpc.RpcError`` with a status
code; a program sees :class:`~gpupool.errors.ConnectError`, ``ReadError``, ``WriteError`` or
``ConnectionTimeout``, each naming the peer, what was being done, and the cause in a few
words, chained to the original error.
"""

from __future__ import annotations

import errno
import sys
from typing import Any, Literal

from gpupool.errors import (
    ConnectError,
    ConnectionLost,
    ConnectionTimeout,
    ReadError,
    WriteError,
)

Doing = Literal["connect", "read", "write"]
_KINDS: dict[str, type[ConnectionLost]] = {
    "connect": ConnectError,
    "read": ReadError,
    "write": WriteError,
}
_VERBS = {"connect": "cannot reach", "read": "receiving from", "write": "sending to"}


def _rpc_error(exc: BaseException) -> Any:
    """``exc`` as a ``grpc.RpcError``, or None. gRPC is not imported for this: an error can
    be gRPC's only where gRPC is loaded already (a worker reaching peers over tcp:// and
    shm:// never loads it)."""
    grpc = sys.modules.get("grpc")
    return exc if grpc is not None and isinstance(exc, grpc.RpcError) else None


def _deadline_passed(rpc: Any) -> bool:
    return bool(rpc.code() == sys.modules["grpc"].StatusCode.DEADLINE_EXCEEDED)


def translate(exc: BaseException, doing: Doing, peer: str) -> ConnectionLost:
    """The gpupool error for ``exc``, met while ``doing`` something with ``peer`` (a daemon's
    address, a session's name). Raise it ``from exc``."""
    if isinstance(exc, ConnectionLost):
        return exc
    cause = describe(exc)
    rpc = _rpc_error(exc)
    timed_out = isinstance(exc, TimeoutError) or (rpc is not None and _deadline_passed(rpc))
    kind = ConnectionTimeout if timed_out else _KINDS[doing]
    if doing == "connect":
        return kind(f"{_VERBS[doing]} {peer}: {cause}")
    return kind(f"{_VERBS[doing]} {peer} failed: {cause}")


def describe(exc: BaseException) -> str:
    """The cause of ``exc`` in a few words: 'connection refused', 'no answer in 10 s'."""
    rpc = _rpc_error(exc)
    if rpc is not None:
        code, details = rpc.code(), rpc.details() or ""
        if _deadline_passed(rpc):
            return "no answer before the deadline"
        # "failed to connect to all addresses; last error: UNKNOWN: ipv4:...: Connection refused"
        tail = details.rsplit(": ", 1)[-1].strip()
        return f"{tail[:1].lower()}{tail[1:]}" if tail else code.name
    if isinstance(exc, TimeoutError) and not exc.errno:
        return str(exc) or "timed out"
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"{exc.strerror or errno.errorcode.get(exc.errno, exc.errno)}".lower()
    return str(exc) or type(exc).__name__
