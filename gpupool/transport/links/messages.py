"""Transports that carry only messages (``grpc://``, ``ucx://``): payloads ride in them.

A host-to-device payload follows its header as ``Chunk`` requests; a device-to-host reply's
data comes as replies with ``more`` set, written into the target as each arrives.
"""

from __future__ import annotations

from gpupool.proto import gpupool_pb2 as pb
from gpupool.proto.limits import CHUNK_SIZE
from gpupool.transport.links import Link
from gpupool.transport.payload import pieces


class MessageLink(Link):
    def send_copy(self, header: pb.Request, data: memoryview) -> None:
        self.send(header)
        for start, length in pieces(len(data), CHUNK_SIZE):
            self.send(pb.Request(chunk=pb.Chunk(data=data[start : start + length].tobytes())))

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
