"""The virtual node on a real GPU (skipped without one): CUDA IPC inside a daemon, staged
tcp:// peer copies between two daemons, and an all-reduce over both, against NumPy.

Two daemons on one GPU host share its GPUs: the first daemon's devices are listed twice (two
sessions of one device, so two workers, whose copies go through CUDA IPC), the second's
devices are reached over tcp://, through the workers' pinned staging buffers.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

import gpupool
import gpupool.cupy as cp
from gpupool.cupy.cuda import nccl
from gpupool.server.daemon import Daemon, start_daemon

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def gpu_daemons() -> Iterator[list[Daemon]]:
    try:
        first = start_daemon(backend="cupy", log_level="warning")
    except RuntimeError as exc:
        pytest.skip(f"no GPU here: {exc}")
    second = start_daemon(backend="cupy", log_level="warning")
    yield [first, second]
    first.stop()
    second.stop()


def test_peer_copies_and_an_all_reduce_between_gpu_workers(gpu_daemons: list[Daemon]) -> None:
    first, second = gpu_daemons
    context = gpupool.connect([first.address, first.address, second.address])
    try:
        count = len(context.devices)
        per_daemon = count // 3
        same, across = per_daemon, 2 * per_daemon  # device 0's twin on daemon 1, and daemon 2's
        host = np.arange(1 << 22, dtype=np.float32)
        with cp.cuda.Device(0):
            a = cp.asarray(host)
        before = gpupool.stats().bytes_sent + gpupool.stats().bytes_received
        with cp.cuda.Device(same):
            twin = a.copy()  # CUDA IPC between two workers of one daemon
        with cp.cuda.Device(across):
            far = twin.copy()  # tcp://, staged through pinned buffers
        assert gpupool.stats().bytes_sent + gpupool.stats().bytes_received == before
        assert np.array_equal(far.get(), host) and np.array_equal(twin.get(), host)
        ranks = [0, same, across]
        comms = nccl.NcclCommunicator.initAll(ranks)
        arrays = []
        for rank, device in enumerate(ranks):
            with cp.cuda.Device(device):
                arrays.append(cp.full(1 << 20, rank + 1.0, dtype=cp.float32))
        nccl.groupStart()
        for comm, array in zip(comms, arrays, strict=True):
            with cp.cuda.Device(comm.device_id()):
                comm.allReduce(
                    array.data.ptr, array.data.ptr, array.size, nccl.NCCL_FLOAT32, nccl.NCCL_SUM, 0
                )
        nccl.groupEnd()
        for array in arrays:
            assert np.array_equal(array.get(), np.full(1 << 20, 6.0, np.float32))
    finally:
        gpupool.disconnect()
