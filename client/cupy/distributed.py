"""``cupyx.distributed``: ``init_process_group`` and its ``NCCLBackend``, one rank a process.

Rank 0's process runs the rendezvous at ``host:port`` (CuPy's ``CUPYX_DISTRIBUTED_HOST`` and
``CUPYX_DISTRIBUTED_PORT``, 127.0.0.1:13333 by default); every rank joins it with its current
device, and the collectives then run between the ranks' workers (``cupy.cuda.nccl``).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from gpupool.client import collectives, rendezvous, runtime
from gpupool.cupy.cuda import get_current_stream, nccl

_DEFAULT_HOST, _DEFAULT_PORT = "127.0.0.1", 13333
_NCCL_DTYPES = {dtype: code for code, dtype in nccl._DTYPES.items()}
_OPS = {name: code for code, name in enumerate(collectives.OPS)}


def init_process_group(
    n_devices: int,
    rank: int,
    *,
    backend: str = "nccl",
    host: str | None = None,
    port: int | None = None,
    use_mpi: bool = False,
) -> NCCLBackend:
    if backend != "nccl" or use_mpi:
        raise ValueError(f"backend {backend!r} (use_mpi={use_mpi}): only 'nccl' without MPI")
    return NCCLBackend(n_devices, rank, host, port)


class NCCLBackend:
    """CuPy's ``NCCLBackend``: arrays in, arrays out, on the current stream by default."""

    def __init__(
        self, n_devices: int, rank: int, host: str | None = None, port: int | None = None
    ) -> None:
        host = host or os.environ.get("CUPYX_DISTRIBUTED_HOST", _DEFAULT_HOST)
        port = port or int(os.environ.get("CUPYX_DISTRIBUTED_PORT", _DEFAULT_PORT))
        nonce = f"cupyx-{host}-{port}"
        if rank == 0:
            uid = rendezvous.unique_id(host, port, nonce)
        else:
            uid = rendezvous.encode(host, port, nonce)
        self._n_devices = n_devices
        self.rank = rank
        self._comm = nccl.NcclCommunicator(n_devices, uid, rank)

    def all_reduce(
        self, in_array: Any, out_array: Any, op: str = "sum", stream: Any = None
    ) -> None:
        code = self._check(in_array, out_array)
        self._comm.allReduce(
            in_array.data.ptr, out_array.data.ptr, in_array.size, code, _op(op), _stream(stream)
        )

    def reduce(
        self, in_array: Any, out_array: Any, root: int = 0, op: str = "sum", stream: Any = None
    ) -> None:
        code = self._check(in_array, out_array)
        self._comm.reduce(
            in_array.data.ptr,
            out_array.data.ptr,
            in_array.size,
            code,
            _op(op),
            root,
            _stream(stream),
        )

    def broadcast(self, in_out_array: Any, root: int = 0, stream: Any = None) -> None:
        code = self._check(in_out_array)
        self._comm.bcast(in_out_array.data.ptr, in_out_array.size, code, root, _stream(stream))

    def reduce_scatter(
        self, in_array: Any, out_array: Any, count: int, op: str = "sum", stream: Any = None
    ) -> None:
        code = self._check(in_array, out_array)
        self._comm.reduceScatter(
            in_array.data.ptr, out_array.data.ptr, count, code, _op(op), _stream(stream)
        )

    def all_gather(self, in_array: Any, out_array: Any, count: int, stream: Any = None) -> None:
        code = self._check(in_array, out_array)
        self._comm.allGather(in_array.data.ptr, out_array.data.ptr, count, code, _stream(stream))

    def send(self, array: Any, peer: int, stream: Any = None) -> None:
        code = self._check(array)
        self._comm.send(array.data.ptr, array.size, code, peer, _stream(stream))

    def recv(self, out_array: Any, peer: int, stream: Any = None) -> None:
        code = self._check(out_array)
        self._comm.recv(out_array.data.ptr, out_array.size, code, peer, _stream(stream))

    def send_recv(self, in_array: Any, out_array: Any, peer: int, stream: Any = None) -> None:
        nccl.groupStart()
        try:
            self.send(in_array, peer, stream)
            self.recv(out_array, peer, stream)
        finally:
            nccl.groupEnd()

    def barrier(self) -> None:
        """Every rank has reached this point (an all-reduce of one element, waited for)."""
        from gpupool.cupy import zeros

        token = zeros(1, np.int32)
        self.all_reduce(token, token)
        runtime.deviceSynchronize()

    def stop(self) -> None:
        self._comm.destroy()

    def _check(self, *arrays: Any) -> int:
        dtype = arrays[0].dtype
        for array in arrays:
            if array.dtype != dtype:
                raise TypeError(f"arrays of {dtype} and {array.dtype}")
            if not array.flags.c_contiguous:
                raise ValueError("collectives take C-contiguous arrays")
        try:
            return _NCCL_DTYPES[np.dtype(dtype)]
        except KeyError:
            raise TypeError(f"no NCCL type for {dtype}") from None


def _op(name: str) -> int:
    try:
        return _OPS[name]
    except KeyError:
        raise ValueError(f"reduction {name!r} (one of {', '.join(_OPS)})") from None


def _stream(stream: Any) -> int:
    return int((get_current_stream() if stream is None else stream).ptr)


__all__ = ["NCCLBackend", "init_process_group"]
