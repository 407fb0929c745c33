"""``ucx://``: a session over a UCX endpoint (RDMA where the fabric has it, else TCP).

Imported only where ucxx is installed (``gpupool[ucx]``); the registry skips it otherwise.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from gpupool.errors import ConnectionLost, GpupoolError
from gpupool.proto import gpupool_pb2 as pb
from gpupool.transport.failures import translate
from gpupool.transport.links import Endpoint
from gpupool.transport.links.messages import MessageLink
from gpupool.transport.ucx import END, MESSAGE, run, ucxx


class UcxLink(MessageLink):
    def __init__(self, endpoint: Any) -> None:
        self._endpoint = endpoint
        self._ended = False

    def send_message(self, message: bytes) -> None:
        self._send(MESSAGE + message)

    def receive(self) -> pb.Reply:
        if self._ended:
            raise ConnectionLost("the daemon ended the session")
        try:
            obj = run(self._endpoint.recv_obj())
        except Exception as exc:  # ucxx's errors: the endpoint closed or failed
            raise translate(exc, "read", "the daemon") from exc
        if bytes(obj[:1]) == END:
            self._ended = True
            raise ConnectionLost("the daemon ended the session")
        return pb.Reply.FromString(bytes(obj[1:]))

    def abort(self) -> None:
        self._ended = True
        try:
            run(self._endpoint.close(), 1.0)
        except Exception:  # already closed or failed: either way nothing more moves
            pass

    def close(self, timeout: float) -> None:
        try:
            if not self._ended:
                self._send(END)  # the daemon finishes what was sent, then ends the session
                while bytes(run(self._endpoint.recv_obj(), timeout)[:1]) != END:
                    pass
        except Exception:  # gone already, or not done in time: closing ends the worker
            pass
        finally:
            try:
                run(self._endpoint.close(), timeout)
            except Exception:
                pass

    def _send(self, obj: bytes) -> None:
        try:
            run(self._endpoint.send_obj(obj))
        except Exception as exc:
            raise translate(exc, "write", "the daemon") from exc


def open_ucx(endpoint: Endpoint, timeout: float) -> UcxLink:
    parts = urlsplit(endpoint.url)
    if parts.hostname is None or parts.port is None:
        raise GpupoolError(f"bad ucx endpoint {endpoint.url!r}")
    try:
        ucx_endpoint = run(
            ucxx.create_endpoint(parts.hostname, parts.port, connect_timeout=timeout), timeout
        )
    except Exception as exc:
        raise OSError(f"cannot connect to {endpoint.url}: {exc}") from exc
    return UcxLink(ucx_endpoint)
