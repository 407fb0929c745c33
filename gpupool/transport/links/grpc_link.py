"""``grpc://``: a session as one gRPC bidirectional stream, payloads in chunk messages.

The reference transport: it works wherever gRPC does, with TLS where the channel has it.
"""

from __future__ import annotations

import queue
import threading
from typing import Any

import grpc

from gpupool.errors import ConnectionLost
from gpupool.proto import gpupool_pb2 as pb
from gpupool.transport.failures import translate
from gpupool.transport.links import Endpoint
from gpupool.transport.links.messages import MessageLink

_IN_FLIGHT = 8  # messages the stream may hold before a sender waits: bounds client memory
_END = None
_SESSION = f"/{pb.DESCRIPTOR.services_by_name['Daemon'].full_name}/Session"


class GrpcLink(MessageLink):
    def __init__(self, channel: grpc.Channel) -> None:
        self._outbox: queue.Queue[bytes | None] = queue.Queue(_IN_FLIGHT)
        # serialized requests go as they are: the session assembles batches as bytes
        session = channel.stream_stream(_SESSION, None, pb.Reply.FromString)
        # an iterator of replies that is also a grpc.Call and a grpc.Future (done, cancel),
        # which grpc-stubs types as a bare CallIterator
        self._replies: Any = session(iter(self._outbox.get, _END))
        self._dead = False  # the stream ended: what is sent goes nowhere

    def send_message(self, message: bytes) -> None:
        while not self._dead:
            try:
                self._outbox.put(message, timeout=0.5)
                return
            except queue.Full:
                self._dead = self._replies.done()  # nobody will take it; the reply says why

    def receive(self) -> pb.Reply:
        try:
            reply: pb.Reply = next(self._replies)
            return reply
        except StopIteration:
            raise ConnectionLost("the daemon ended the session") from None
        except grpc.RpcError as exc:
            raise translate(exc, "read", "the daemon") from exc

    def abort(self) -> None:
        self._dead = True
        self._replies.cancel()

    def close(self, timeout: float) -> None:
        try:
            self._outbox.put_nowait(_END)
        except queue.Full:  # the stream is stuck or gone: nothing will take it
            pass
        deadline = threading.Timer(timeout, self._replies.cancel)
        deadline.start()
        try:
            for _ in self._replies:  # the replies of nothing: the stream's end
                pass
        except grpc.RpcError:
            pass
        finally:
            deadline.cancel()


def open_grpc(endpoint: Endpoint, timeout: float) -> GrpcLink:
    if endpoint.channel is None:
        raise OSError(f"{endpoint.url}: no gRPC channel to it")
    return GrpcLink(endpoint.channel)
