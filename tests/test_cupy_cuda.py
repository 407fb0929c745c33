"""gpupool.cupy.cuda against real daemons: devices, streams, events and the memory pools."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator

import numpy as np
import pytest

import gpupool
import gpupool.cupy as cp
from gpupool.cupy import cuda
from gpupool.server.daemon import Daemon, start_daemon
from tests.conftest import require_devices

SPIN = r"""
extern "C" __global__ void add_one(float* x, int n, int rounds) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    for (int r = 0; r < rounds; ++r) if (i < n) x[i] += 1.0f;
}"""


def test_device_context_manager_across_two_devices(connected: Daemon) -> None:
    require_devices(2)
    assert cuda.Device().id == 0
    with cuda.Device(1) as device:
        assert cuda.runtime.getDevice() == 1 and device.id == 1
        on_one = cp.array(np.arange(4.0))
        with cuda.Device(0):
            on_zero = cp.array(np.arange(4.0) * 2)
        assert cuda.Device().id == 1
    assert cuda.Device().id == 0
    assert (on_one.data.device_id, on_zero.data.device_id) == (1, 0)
    doubled = np.empty(4)
    on_one.data.copy_to_host(doubled.ctypes.data, doubled.nbytes)  # from device 1
    np.testing.assert_array_equal(doubled * 2, on_zero.get())
    with pytest.raises(RuntimeError), cuda.Device(1):
        raise RuntimeError("leaving the block restores the device")
    assert cuda.Device().id == 0
    cuda.Device(1).use()
    assert cuda.runtime.getDevice() == 1
    cuda.Device(0).use()
    free, total = cuda.Device(1).mem_info
    assert 0 < free <= total
    assert cuda.Device(0).compute_capability.isdigit()
    cuda.Device(1).synchronize()


def test_streams_and_events(connected: Daemon) -> None:
    kernel = cp.RawKernel(SPIN, "add_one")
    x = cp.array(np.zeros(4096, np.float32))
    stream = cuda.Stream(non_blocking=True)
    assert cuda.get_current_stream() == cuda.Stream.null
    with stream:
        assert cuda.get_current_stream() is stream
        start = stream.record()
        kernel((16,), (256,), (x, np.int32(4096), np.int32(50)))
        end = cuda.Event()
        end.record()
    assert cuda.get_current_stream() == cuda.Stream.null
    other = cuda.Stream()
    other.wait_event(end)
    with other:
        kernel((16,), (256,), (x, np.int32(4096), np.int32(1)))
    other.synchronize()
    assert end.query() and end.done and stream.done
    end.synchronize()
    elapsed = cuda.get_elapsed_time(start, end)
    assert elapsed >= 0.0
    np.testing.assert_array_equal(x.get(), np.full(4096, 51, np.float32))
    untimed = cuda.Event(disable_timing=True)
    untimed.record(stream)
    untimed.synchronize()
    with pytest.raises(gpupool.CUDARuntimeError):
        cuda.get_elapsed_time(start, untimed)


def test_the_current_stream_is_per_thread_and_per_device(connected: Daemon) -> None:
    stream = cuda.Stream().use()
    seen: list[cuda.Stream] = []
    thread = threading.Thread(target=lambda: seen.append(cuda.get_current_stream()))
    thread.start()
    thread.join()
    assert seen == [cuda.Stream.null]
    assert cuda.get_current_stream() is stream
    assert cuda.get_current_stream(1) == cuda.Stream.null
    cuda.Stream.null.use()


@pytest.fixture
def fresh_pool(connected: Daemon) -> Iterator[cuda.MemoryPool]:
    pool = cuda.MemoryPool()
    cuda.set_allocator(pool.malloc)
    yield pool
    cuda.set_allocator(cp.get_default_memory_pool().malloc)


def test_the_pool_reuses_blocks_without_round_trips(fresh_pool: cuda.MemoryPool) -> None:
    arena = cuda.memory.ARENA_SIZE
    mallocs = gpupool.stats().mallocs
    first = cp.empty(1000, np.float32)  # 4000 bytes: a 4096-byte block, carved from an arena
    assert (fresh_pool.used_bytes(), fresh_pool.total_bytes()) == (4096, arena)
    assert gpupool.stats().mallocs == mallocs + 1
    address = first.data.ptr
    del first
    gc.collect()
    assert (fresh_pool.used_bytes(), fresh_pool.free_bytes(), fresh_pool.n_free_blocks()) == (
        0,
        arena,
        1,
    )
    before = gpupool.stats().round_trips
    kept = [cp.empty(512, np.uint8) for _ in range(arena // 512 - 8)]  # the rest of the arena
    assert gpupool.stats().round_trips == before and gpupool.stats().mallocs == mallocs + 1
    assert {block.data.ptr for block in kept}.isdisjoint({address})
    cp.empty(512, np.uint8)  # the arena is full: the next block comes from a new one
    assert gpupool.stats().mallocs == mallocs + 2
    assert fresh_pool.total_bytes() == 2 * arena
    del kept
    gc.collect()
    cached = fresh_pool.n_free_blocks()
    before = gpupool.stats().round_trips
    for _ in range(100):
        again = cp.empty(1024, np.float32)
        assert again.data.ptr == address
        del again
    assert gpupool.stats().round_trips == before
    with cuda.Stream():  # blocks are kept per stream: another stream gets a block of its own
        other = cp.empty(1024, np.float32)
    assert other.data.ptr != address
    del other
    gc.collect()
    assert fresh_pool.n_free_blocks() == cached + 1
    fresh_pool.free_all_blocks()  # no block is lent: every arena goes back to the daemon
    assert (fresh_pool.total_bytes(), fresh_pool.n_free_blocks()) == (0, 0)
    freed = gpupool.stats().calls
    cuda.Device().synchronize()
    assert gpupool.stats().calls == freed + 1  # the frees were queued: they went with the sync
    cuda.set_allocator(None)  # no pool: every allocation asks the daemon
    before = gpupool.stats().round_trips
    cp.empty(10, np.float32)
    assert gpupool.stats().round_trips == before + 1
    assert isinstance(cuda.memory.alloc(0), cuda.MemoryPointer)


def test_pool_limits(fresh_pool: cuda.MemoryPool) -> None:
    fresh_pool.set_limit(size=8192)
    assert fresh_pool.get_limit() == 8192
    kept = cp.empty(4096, np.uint8)
    with pytest.raises(cuda.OutOfMemoryError, match="limit set to: 8,192 bytes"):
        cp.empty(4097, np.uint8)
    assert kept.nbytes == 4096
    fresh_pool.set_limit(fraction=0.5)
    assert fresh_pool.get_limit() == cuda.Device().mem_info[1] // 2
    with pytest.raises(ValueError):
        fresh_pool.set_limit(size=1, fraction=0.5)


def test_out_of_memory_frees_the_cache_first_then_raises_cupys_error() -> None:
    small = start_daemon(backend="emu", emu_devices=1, emu_memory=64 << 20)
    try:
        gpupool.connect(small.address)
        pool = cp.get_default_memory_pool()
        big = cp.empty(40 << 20, np.uint8)
        del big
        gc.collect()
        assert pool.free_bytes() == 40 << 20
        # 40 MiB cached + 30 MiB does not fit in 64 MiB: the pool frees its cache and retries.
        again = cp.empty(30 << 20, np.uint8)
        assert pool.free_bytes() == 0 and pool.used_bytes() == 30 << 20
        with pytest.raises(cp.cuda.memory.OutOfMemoryError) as info:
            cp.empty(50 << 20, np.uint8)
        assert isinstance(info.value, MemoryError)
        assert str(info.value) == (
            "Out of memory allocating 52,428,800 bytes (allocated so far: 31,457,280 bytes)."
        )
        assert again.get()[:4].shape == (4,)  # the session goes on
    finally:
        gpupool.disconnect()
        small.stop()


def test_pinned_memory_works_with_numpy_and_is_reused() -> None:
    pool = cuda.PinnedMemoryPool()
    cuda.set_pinned_memory_allocator(pool.malloc)
    try:
        pointer = cuda.alloc_pinned_memory(1000)
        host = np.frombuffer(pointer, np.float64, 125)
        host[:] = np.arange(125)
        assert np.frombuffer(pointer + 8, np.float64, 1)[0] == 1.0
        assert (pool.used_bytes(), pool.total_bytes()) == (1024, 1024)
        address = pointer.ptr
        del pointer, host
        gc.collect()
        assert (pool.used_bytes(), pool.n_free_blocks()) == (0, 1)
        assert cuda.alloc_pinned_memory(600).ptr == address
        pool.free_all_blocks()
        cuda.set_pinned_memory_allocator(None)
        assert cuda.alloc_pinned_memory(16).size() == 16
    finally:
        cuda.set_pinned_memory_allocator(cp.get_default_pinned_memory_pool().malloc)


def test_pinned_host_memory_as_copy_source(connected: Daemon) -> None:
    pointer = cuda.alloc_pinned_memory(64)
    host = np.frombuffer(pointer, np.int32, 16)
    host[:] = np.arange(16)
    device = cp.empty(16, np.int32)
    with cuda.Stream() as stream:
        device.data.copy_from_host_async(pointer, 64)
        stream.synchronize()
    back = np.empty(16, np.int32)
    device.data.copy_to_host(back.ctypes.data, 64)
    np.testing.assert_array_equal(back, np.arange(16))
