"""``grpc://``: a session as one gRPC bidirectional stream, payloads in chunk messages.

The reference transport: it works wherever gRPC does, with TLS where the channel has it.
"""

from __future__ import annotations

import queue
import threading

import grpc

from gpupool.client.transports import Endpoint, Link
from gpupool.errors import ConnectionLost
from gpupool.proto import gpupool_pb2 as pb
from gpupool.proto import gpupool_pb2_grpc as pb_grpc
from gpupool.proto.limits import CHUNK_SIZE

_IN_FLIGHT = 8  # messages the stream may hold before a sender waits: bounds client memory
_END = None


class GrpcLink(Link):
    def __init__(self, stub: pb_grpc.DaemonStub) -> None:
        self._outbox: queue.Queue[pb.Request | None] = queue.Queue(_IN_FLIGHT)
        self._replies = stub.Session(iter(self._outbox.get, _END))
        self._dead = False  # the stream ended: what is sent goes nowhere

    def send(self, request: pb.Request) -> None:
        while not self._dead:
            try:
                self._outbox.put(request, timeout=0.5)
                return
            except queue.Full:
                self._dead = self._replies.done()  # nobody will take it; the reply says why

    def send_copy(self, header: pb.Request, data: memoryview) -> None:
        self.send(header)
        for start in range(0, len(data), CHUNK_SIZE):
            self.send(pb.Request(chunk=pb.Chunk(data=data[start : start + CHUNK_SIZE].tobytes())))

    def receive(self) -> pb.Reply:
        try:
            reply: pb.Reply = next(self._replies)
            return reply
        except StopIteration:
            raise ConnectionLost("the daemon ended the session") from None
        except grpc.RpcError as exc:
            raise ConnectionLost(f"{exc.code().name}: {exc.details()}") from exc

    def receive_data(self, first: pb.Reply, target: memoryview) -> int:
        offset, reply = 0, first
        while True:
            end = offset + len(reply.data)
            if end <= len(target):
                target[offset:end] = reply.data
            offset = end
            if not reply.more:
                return offset
            reply = self.receive()

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


def open_grpc(endpoint: Endpoint, timeout: float) -> Link:
    return GrpcLink(endpoint.stub)
