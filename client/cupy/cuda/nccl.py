"""``cupy.cuda.nccl``: NCCL's API, run by the workers of the communicator's devices.

The collectives walk a ring of peer links between the workers (``gpupool.client.collectives``);
no payload passes through this process. One process may drive every rank
(``NcclCommunicator.initAll``, or one ``NcclCommunicator`` per device between ``groupStart``
and ``groupEnd``), or each process one rank, meeting at the rendezvous that
``get_unique_id`` starts.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from gpupool.client import collectives, context, rendezvous, runtime
from gpupool.client.collectives import Communicator, Member

NCCL_SUM, NCCL_PROD, NCCL_MAX, NCCL_MIN, NCCL_AVG = range(5)
NCCL_INT8 = NCCL_CHAR = 0
NCCL_UINT8 = 1
NCCL_INT32 = NCCL_INT = 2
NCCL_UINT32 = 3
NCCL_INT64 = 4
NCCL_UINT64 = 5
NCCL_FLOAT16 = NCCL_HALF = 6
NCCL_FLOAT32 = NCCL_FLOAT = 7
NCCL_FLOAT64 = NCCL_DOUBLE = 8
NCCL_BFLOAT16 = 9

_DTYPES: dict[int, np.dtype] = {
    NCCL_INT8: np.dtype(np.int8),
    NCCL_UINT8: np.dtype(np.uint8),
    NCCL_INT32: np.dtype(np.int32),
    NCCL_UINT32: np.dtype(np.uint32),
    NCCL_INT64: np.dtype(np.int64),
    NCCL_UINT64: np.dtype(np.uint64),
    NCCL_FLOAT16: np.dtype(np.float16),
    NCCL_FLOAT32: np.dtype(np.float32),
    NCCL_FLOAT64: np.dtype(np.float64),
}
_OPS = dict(enumerate(collectives.OPS))  # NCCL_SUM .. NCCL_AVG
_VERSION = 22800  # the NCCL release whose API this follows (2.28)


class NcclError(RuntimeError):
    """An NCCL call refused (a bad argument), as CuPy's ``NcclError``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"NCCL_ERROR_INVALID_ARGUMENT: {message}")
        self.status = status


def get_version() -> int:
    return _VERSION


def get_build_version() -> int:
    return _VERSION


def get_unique_id() -> tuple[int, ...]:
    """A new communicator id; its rendezvous runs in this process until every rank joined."""
    return rendezvous.unique_id()


_pending = threading.local()  # communicators made inside a group, joined at its end


def groupStart() -> None:
    collectives.group_start()


def groupEnd() -> None:
    joins: list[NcclCommunicator] = getattr(_pending, "joins", [])
    if collectives.group_depth() == 1 and joins:
        _pending.joins = []
        threads = [threading.Thread(target=comm._join) for comm in joins]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        failed = [comm._failure for comm in joins if comm._failure is not None]
        if failed:
            collectives.group_end()
            raise failed[0]
    collectives.group_end()


class NcclCommunicator:
    """One rank of a communicator, on the current device."""

    def __init__(self, ndev: int, commId: Any, rank: int) -> None:
        if not 0 <= rank < ndev:
            raise NcclError(4, f"rank {rank} of {ndev}")
        self._ndev = ndev
        self._uid = commId
        self._rank = rank
        self._device = runtime.getDevice()
        self._comm: Communicator | None = None
        self._failure: Exception | None = None
        self._entry = collectives.member(self._device)
        if collectives.group_depth():
            if not hasattr(_pending, "joins"):
                _pending.joins = []
            _pending.joins.append(self)
        else:
            self._join()
            if self._failure is not None:
                raise self._failure

    def _join(self) -> None:
        try:
            table = rendezvous.exchange(self._uid, self._rank, self._ndev, self._entry.to_json())
            members = [Member.from_json(entry) for entry in table]
            _host, _port, nonce = rendezvous.decode(self._uid)
            self._comm = Communicator(nonce, self._rank, members, self._device)
        except Exception as exc:
            self._failure = exc

    @staticmethod
    def initAll(devices: int | Sequence[int]) -> list[NcclCommunicator]:
        """A communicator over ``devices`` (a count: devices 0..n-1), one rank each, all
        driven by this process."""
        ordinals = list(range(devices)) if isinstance(devices, int) else [int(d) for d in devices]
        ctx = context.current()
        for ordinal in ordinals:
            ctx.device(ordinal)
        members = [collectives.member(ordinal) for ordinal in ordinals]
        nonce = secrets.token_hex(16)  # no rendezvous: this process holds every rank
        comms = []
        for rank, ordinal in enumerate(ordinals):
            comm = NcclCommunicator.__new__(NcclCommunicator)
            comm._ndev, comm._uid, comm._rank, comm._device = len(ordinals), None, rank, ordinal
            comm._failure, comm._entry = None, members[rank]
            comm._comm = Communicator(nonce, rank, members, ordinal)
            comms.append(comm)
        return comms

    # what it is

    def device_id(self) -> int:
        return self._device

    def rank_id(self) -> int:
        return self._rank

    def size(self) -> int:
        return self._ndev

    def destroy(self) -> None:
        self._comm = None

    def abort(self) -> None:
        self._comm = None

    # collectives

    def allReduce(
        self, sendbuf: int, recvbuf: int, count: int, datatype: int, op: int, stream: int
    ) -> None:
        self._ring(collectives.ALL_REDUCE, sendbuf, recvbuf, count, datatype, op, 0, stream)

    def reduce(
        self,
        sendbuf: int,
        recvbuf: int,
        count: int,
        datatype: int,
        op: int,
        root: int,
        stream: int,
    ) -> None:
        self._ring(collectives.REDUCE, sendbuf, recvbuf, count, datatype, op, root, stream)

    def broadcast(
        self, sendbuf: int, recvbuf: int, count: int, datatype: int, root: int, stream: int
    ) -> None:
        self._ring(collectives.BROADCAST, sendbuf, recvbuf, count, datatype, NCCL_SUM, root, stream)

    def bcast(self, buff: int, count: int, datatype: int, root: int, stream: int) -> None:
        self.broadcast(buff, buff, count, datatype, root, stream)

    def allGather(self, sendbuf: int, recvbuf: int, count: int, datatype: int, stream: int) -> None:
        self._ring(collectives.ALL_GATHER, sendbuf, recvbuf, count, datatype, NCCL_SUM, 0, stream)

    def reduceScatter(
        self, sendbuf: int, recvbuf: int, recvcount: int, datatype: int, op: int, stream: int
    ) -> None:
        self._ring(collectives.REDUCE_SCATTER, sendbuf, recvbuf, recvcount, datatype, op, 0, stream)

    def send(self, sendbuf: int, count: int, datatype: int, peer: int, stream: int) -> None:
        self._live().send(sendbuf, count * _dtype(datatype).itemsize, peer, int(stream))

    def recv(self, recvbuf: int, count: int, datatype: int, peer: int, stream: int) -> None:
        self._live().recv(recvbuf, count * _dtype(datatype).itemsize, peer, int(stream))

    def _ring(
        self,
        kind: collectives.Kind,
        send: int,
        recv: int,
        count: int,
        datatype: int,
        op: int,
        root: int,
        stream: int,
    ) -> None:
        if op not in _OPS:
            raise NcclError(4, f"reduction op {op}")
        if count < 0:
            raise NcclError(4, f"count {count}")
        self._live().collective(
            kind, send, recv, count, _dtype(datatype), _OPS[op], root, int(stream)
        )

    def _live(self) -> Communicator:
        if self._comm is None:
            if self._failure is not None:
                raise self._failure
            raise NcclError(4, "the communicator was destroyed, or its group has not ended")
        return self._comm


def _dtype(datatype: int) -> np.dtype:
    try:
        return _DTYPES[datatype]
    except KeyError:
        raise NcclError(4, f"NCCL datatype {datatype} (bfloat16 has no NumPy type)") from None


__all__ = [
    "NCCL_AVG",
    "NCCL_BFLOAT16",
    "NCCL_CHAR",
    "NCCL_DOUBLE",
    "NCCL_FLOAT",
    "NCCL_FLOAT16",
    "NCCL_FLOAT32",
    "NCCL_FLOAT64",
    "NCCL_HALF",
    "NCCL_INT",
    "NCCL_INT8",
    "NCCL_INT32",
    "NCCL_INT64",
    "NCCL_MAX",
    "NCCL_MIN",
    "NCCL_PROD",
    "NCCL_SUM",
    "NCCL_UINT8",
    "NCCL_UINT32",
    "NCCL_UINT64",
    "NcclCommunicator",
    "NcclError",
    "get_build_version",
    "get_unique_id",
    "get_version",
    "groupEnd",
    "groupStart",
]
