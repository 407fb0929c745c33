"""The daemon's ``ucx://`` listener (optional extra ``gpupool[ucx]``).

A UCX endpoint cannot be handed to another process the way a socket can, so a UCX session
is relayed by the front exactly as a gRPC one is: :meth:`DaemonService.session` serves
both, fed by the endpoint's messages instead of a gRPC stream.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

from gpupool.addresses import join_host_port
from gpupool.logs import fields
from gpupool.server.service import DaemonService
from gpupool.transport.ucx import END, MESSAGE, loop, run, ucxx

log = logging.getLogger(__name__)

_IN_FLIGHT = 8  # requests waiting for the worker before the endpoint is read on


class _Call:
    """What ``DaemonService.session`` needs of a gRPC call: callbacks for the client's end,
    and a way for the daemon to end the call (a session that did not open in time)."""

    def __init__(self, peer: str, endpoint: Any, requests: queue.Queue[bytes | None]) -> None:
        self._peer = peer
        self._endpoint = endpoint
        self._requests = requests
        self._callbacks: list[Callable[[], None]] = []

    def add_callback(self, callback: Callable[[], None]) -> bool:
        self._callbacks.append(callback)
        return True

    def peer(self) -> str:
        return self._peer

    def client_gone(self) -> None:
        for callback in self._callbacks:
            callback()

    def cancel(self) -> None:
        """End the session from the daemon's side (from a thread other than the loop's)."""
        self.client_gone()
        try:
            self._requests.put_nowait(None)  # the session's request iterator stops
        except queue.Full:
            pass  # requests are queued: the session is open and reads on
        try:
            run(self._endpoint.close(), 5.0)
        except Exception as exc:
            log.debug("ucx endpoint close failed", extra=fields(reason=repr(exc)))


class UcxListener:
    """Accepts UCX endpoints and relays each as one session."""

    def __init__(self, service: DaemonService, public_host: str) -> None:
        self._service = service
        self._listener = run(self._create())
        self.endpoints = [f"ucx://{join_host_port(public_host, self._listener.port)}"]

    async def _create(self) -> Any:
        return ucxx.create_listener(self._serve)

    def close(self) -> None:
        try:
            loop().call_soon_threadsafe(self._listener.close)
        except RuntimeError:
            pass

    async def _serve(self, endpoint: Any) -> None:
        requests: queue.Queue[bytes | None] = queue.Queue(_IN_FLIGHT)
        call = _Call(f"ucx:{id(endpoint):x}", endpoint, requests)
        threading.Thread(
            target=self._replies, args=(endpoint, requests, call), name="ucx-session", daemon=True
        ).start()
        try:
            while True:
                obj = await endpoint.recv_obj()
                if bytes(obj[:1]) == END:
                    break
                await asyncio.to_thread(requests.put, bytes(obj[1:]))
        except Exception as exc:  # the client went away without ending the session
            log.debug("ucx endpoint closed", extra=fields(reason=repr(exc)))
            call.client_gone()
        await asyncio.to_thread(requests.put, None)

    def _replies(self, endpoint: Any, requests: queue.Queue[bytes | None], call: _Call) -> None:
        try:
            for raw in self._service.session(iter(requests.get, None), call):
                run(endpoint.send_obj(MESSAGE + raw))
            run(endpoint.send_obj(END))
        except Exception as exc:
            log.debug("ucx session ended", extra=fields(reason=repr(exc)))
