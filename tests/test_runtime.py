"""The runtime client against real daemons: copies, kernels, streams, events and errors."""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import gpupool
from gpupool import runtime as rt
from gpupool.server.backends import BackendConfig
from gpupool.server.daemon import Daemon
from tests.conftest import run_client

SAXPY = r"""
extern "C" __global__ void saxpy(float a, const float* x, float* y, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = a * x[i] + y[i];
}"""

BLOCK_SUM = r"""
extern "C" __global__ void block_sum(const int* in, unsigned long long* out, int n) {
    __shared__ int partial[128];
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    partial[threadIdx.x] = i < n ? in[i] : 0;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) partial[threadIdx.x] += partial[threadIdx.x + s];
        __syncthreads();
    }
    if (threadIdx.x == 0) atomicAdd(out, (unsigned long long)partial[0]);
}"""


def to_device(host: np.ndarray) -> int:
    ptr = rt.malloc(host.nbytes)
    rt.memcpy(ptr, host.ctypes.data, host.nbytes, rt.memcpyHostToDevice)
    return ptr


def to_host(ptr: int, like: np.ndarray) -> np.ndarray:
    out = np.empty_like(like)
    rt.memcpy(out.ctypes.data, ptr, out.nbytes, rt.memcpyDeviceToHost)
    return out


def test_the_issue_program_runs(connected: Daemon) -> None:
    assert rt.getDeviceCount() >= 1
    rt.setDevice(0)
    n = 1 << 20
    x = np.random.rand(n).astype(np.float32)
    y = np.random.rand(n).astype(np.float32)
    dx, dy = to_device(x), to_device(y)
    saxpy = gpupool.Module.from_source(SAXPY).get_function("saxpy")
    saxpy((n // 256,), (256,), (np.float32(2.0), dx, dy, np.int32(n)))
    np.testing.assert_allclose(to_host(dy, y), 2 * x + y, rtol=1e-6)


def test_256_mib_round_trip_keeps_every_byte(connected: Daemon) -> None:
    size = 256 << 20
    host = np.random.default_rng(1).integers(0, 256, size, dtype=np.uint8)
    first, second = rt.malloc(size), rt.malloc(size)
    rt.memcpy(first, host.ctypes.data, size, rt.memcpyHostToDevice)
    rt.memcpy(second, first, size, rt.memcpyDeviceToDevice)
    back = np.empty_like(host)
    rt.memcpy(back.ctypes.data, second, size, rt.memcpyDeviceToHost)
    assert hashlib.sha256(back).hexdigest() == hashlib.sha256(host).hexdigest()
    rt.free(first)
    rt.free(second)


def test_block_reduction_with_shared_memory(connected: Daemon) -> None:
    n = 512 * 128
    values = np.arange(n, dtype=np.int32)
    src, total = to_device(values), rt.malloc(8)
    rt.memset(total, 0, 8)
    kernel = gpupool.Module.from_source(BLOCK_SUM).get_function("block_sum")
    kernel((512,), (128,), (src, total, np.int32(n)))
    assert to_host(total, np.zeros(1, np.uint64))[0] == values.sum()


def test_memory_info_follows_allocations(connected: Daemon) -> None:
    free_before, total = rt.memGetInfo()
    ptr = rt.malloc(64 << 20)
    free_during, _ = rt.memGetInfo()
    rt.free(ptr)
    free_after, _ = rt.memGetInfo()
    assert total >= free_before
    assert free_before - free_during >= 64 << 20
    assert free_after >= free_during + (64 << 20)


def test_memset_and_host_buffers(connected: Daemon) -> None:
    ptr = rt.malloc(1000)
    rt.memset(ptr, 7, 1000)
    out = bytearray(1000)
    rt.memcpy(out, ptr, 1000, rt.memcpyDeviceToHost)  # a buffer object, not an address
    assert out == bytes([7]) * 1000
    rt.memcpyAsync(ptr + 10, b"\x01\x02\x03", 3, rt.memcpyHostToDevice, 0)
    rt.memcpy(out, ptr, 1000, rt.memcpyDeviceToHost)
    assert out[9:14] == b"\x07\x01\x02\x03\x07"


def test_device_properties_and_device_switching(connected: Daemon) -> None:
    assert rt.getDeviceCount() == 2 or connected.backend == "cupy"
    props = rt.getDeviceProperties(0)
    assert props["totalGlobalMem"] > 0 and isinstance(props["name"], bytes)
    last = rt.getDeviceCount() - 1
    rt.setDevice(last)
    assert rt.getDevice() == last
    ptr = to_device(np.arange(10, dtype=np.int64))
    np.testing.assert_array_equal(to_host(ptr, np.zeros(10, np.int64)), np.arange(10))
    with pytest.raises(gpupool.CUDARuntimeError, match="cudaErrorInvalidDevice"):
        rt.setDevice(99)


def test_streams_and_events(connected: Daemon) -> None:
    n = 1 << 16
    x = np.ones(n, np.float32)
    dx, dy = to_device(x), to_device(x)
    saxpy = gpupool.Module.from_source(SAXPY).get_function("saxpy")
    stream = rt.streamCreate()
    start, end = rt.eventCreate(), rt.eventCreate()
    rt.eventRecord(start, stream)
    for _ in range(10):
        saxpy((n // 256,), (256,), (np.float32(1.0), dx, dy, np.int32(n)), stream=stream)
    rt.eventRecord(end, stream)
    other = rt.streamCreate()
    rt.streamWaitEvent(other, end)
    rt.eventSynchronize(end)
    assert rt.eventQuery(end) == 0
    assert rt.eventElapsedTime(start, end) >= 0.0
    rt.streamSynchronize(stream)
    np.testing.assert_allclose(to_host(dy, x), 11.0)
    untimed = rt.eventCreateWithFlags(rt.eventDisableTiming)
    rt.eventRecord(untimed, stream)
    with pytest.raises(gpupool.CUDARuntimeError, match="cudaErrorInvalidResourceHandle"):
        rt.eventElapsedTime(start, untimed)
    for handle in (stream, other):
        rt.streamDestroy(handle)
    for handle in (start, end, untimed):
        rt.eventDestroy(handle)
    rt.deviceSynchronize()


def test_launches_travel_together_with_the_next_sync(connected: Daemon) -> None:
    n = 256
    dy = to_device(np.zeros(n, np.float32))
    dx = to_device(np.ones(n, np.float32))
    saxpy = gpupool.Module.from_source(SAXPY).get_function("saxpy")
    before = gpupool.stats().round_trips, gpupool.stats().messages
    for _ in range(1000):
        saxpy((1,), (n,), (np.float32(1.0), dx, dy, np.int32(n)))
    out = to_host(dy, np.zeros(n, np.float32))
    round_trips = gpupool.stats().round_trips - before[0]
    messages = gpupool.stats().messages - before[1]
    assert (round_trips, messages) == (1, 1)
    np.testing.assert_allclose(out, 1000.0)


def test_threads_share_sessions_and_keep_their_own_current_device(connected: Daemon) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def work(seed: int) -> bool:
        rt.setDevice(seed % rt.getDeviceCount())
        data = np.random.default_rng(seed).random(1 << 18)
        ptr = to_device(data)
        same = bool(np.array_equal(to_host(ptr, data), data))
        rt.free(ptr)
        return same and rt.getDevice() == seed % rt.getDeviceCount()

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(work, range(8)))
    assert rt.getDevice() == 0


# Bad input: a typed error naming the problem, and the session goes on.


def test_copy_past_the_end_names_the_cuda_error(connected: Daemon) -> None:
    ptr = rt.malloc(1024)
    host = np.zeros(2048, np.uint8)
    with pytest.raises(gpupool.CUDARuntimeError, match=r"cudaErrorInvalidValue.*past the end"):
        rt.memcpy(ptr, host.ctypes.data, 2048, rt.memcpyHostToDevice)
    big = np.zeros(8 << 20, np.uint8)  # chunked copies are refused the same way
    with pytest.raises(gpupool.CUDARuntimeError, match="cudaErrorInvalidValue") as caught:
        rt.memcpy(ptr, big.ctypes.data, big.nbytes, rt.memcpyHostToDevice)
    assert caught.value.status == 1
    with pytest.raises(gpupool.CUDARuntimeError, match="past the end"):
        rt.memcpy(big.ctypes.data, ptr, 1025, rt.memcpyDeviceToHost)
    rt.memcpy(ptr, host.ctypes.data, 1024, rt.memcpyHostToDevice)  # the session still works
    assert rt.memGetInfo()[0] > 0


def test_pointers_the_session_does_not_own(connected: Daemon) -> None:
    out = np.zeros(16, np.uint8)
    with pytest.raises(gpupool.CUDARuntimeError, match="not inside an allocation"):
        rt.memcpy(out.ctypes.data, 0xDEAD0000, 16, rt.memcpyDeviceToHost)
    rt.free(0xDEAD0000)  # asynchronous: its error comes with the next synchronizing call
    with pytest.raises(gpupool.CUDARuntimeError, match=r"cudaErrorInvalidValue.*free"):
        rt.deviceSynchronize()
    rt.deviceSynchronize()  # reported once; the session goes on


def test_bad_sizes(connected: Daemon) -> None:
    with pytest.raises(gpupool.CUDARuntimeError, match="cudaErrorInvalidValue"):
        rt.malloc(-1)
    with pytest.raises(gpupool.CUDARuntimeError, match="cudaErrorMemoryAllocation"):
        rt.malloc(1 << 47)
    assert rt.malloc(16) != 0


def test_unknown_function_and_bad_launches(connected: Daemon) -> None:
    module = gpupool.Module.from_source(SAXPY)
    with pytest.raises(gpupool.CUDARuntimeError, match="cudaErrorSymbolNotFound"):
        module.get_function("no_such_kernel")
    saxpy = module.get_function("saxpy")
    saxpy((1,), (0,), (np.float32(1.0), 0, 0, np.int32(0)))  # queued: fails at the next sync
    with pytest.raises(gpupool.CUDARuntimeError, match="cudaErrorInvalidConfiguration"):
        rt.deviceSynchronize()
    with pytest.raises(TypeError, match="host array"):
        saxpy((1,), (1,), (np.zeros(3),))


def test_kernel_that_does_not_compile_carries_the_log(connected: Daemon) -> None:
    source = 'extern "C" __global__ void k(int* p) {\n    p[0] = undefined_name;\n}\n'
    with pytest.raises(gpupool.CompileError) as caught:
        gpupool.Module.from_source(source)
    assert "undefined_name" in caught.value.log
    assert rt.memGetInfo()[1] > 0


def test_malformed_messages_get_an_error_and_the_session_goes_on(connected: Daemon) -> None:
    import grpc

    from gpupool.proto import gpupool_pb2 as pb

    with grpc.insecure_channel(connected.address) as channel:
        session = channel.stream_stream("/gpupool.v1.Daemon/Session")
        garbage = [
            b"\xff\xff\xff",  # undecodable: an error held for the next waiting call
            pb.Request(wait=True, mem_get_info=pb.MemGetInfo()),
            b"",  # an empty message is an empty request, not the end of the session
            pb.Request(wait=True, mem_get_info=pb.MemGetInfo()),
        ]
        requests = [pb.Request(wait=True, open=pb.OpenSession(device=0))]
        replies = session(
            iter(
                [r.SerializeToString() for r in requests]
                + [g if isinstance(g, bytes) else g.SerializeToString() for g in garbage]
            )
        )
        parsed = [pb.Reply.FromString(raw) for raw in replies]
    assert parsed[0].HasField("opened")
    assert parsed[1].error.name == "cudaErrorInvalidValue"  # the held error of the garbage
    assert parsed[2].error.message == "request names no call"
    assert len(parsed) == 3
    # a session that does not start with 'open' is refused
    with grpc.insecure_channel(connected.address) as channel:
        session = channel.stream_stream("/gpupool.v1.Daemon/Session")
        (only,) = session(iter([pb.Request(malloc=pb.Malloc(size=1)).SerializeToString()]))
    assert pb.Reply.FromString(only).error.name == "cudaErrorInvalidValue"
    assert rt.memGetInfo()[1] > 0  # the daemon goes on


# Isolation: sessions are processes of their own.


def test_a_killed_client_gives_its_memory_back(connected: Daemon) -> None:
    # On a GPU, a warm worker the daemon starts meanwhile takes a context of device memory.
    slack = BackendConfig(connected.backend).idle_worker_memory
    size = 4 * slack or 512 << 20
    free_before, _ = rt.memGetInfo()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import numpy as np, sys, time\n"
            "import gpupool\n"
            "from gpupool import runtime as rt\n"
            f"gpupool.connect({connected.address!r})\n"
            f"size = {size}\n"
            "ptr = rt.malloc(size)\n"
            "host = np.ones(size, np.uint8)\n"
            "rt.memcpy(ptr, host.ctypes.data, size, rt.memcpyHostToDevice)\n"
            "print('holding', flush=True)\n"
            "time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
        assert rt.memGetInfo()[0] <= free_before - size + slack
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.communicate()
    deadline = time.monotonic() + 10
    while rt.memGetInfo()[0] < free_before - slack and time.monotonic() < deadline:
        time.sleep(0.1)
    assert rt.memGetInfo()[0] >= free_before - slack


ILLEGAL = r"""
extern "C" __global__ void poke(int* p) { p[threadIdx.x] = 42; }
"""


def test_an_illegal_access_poisons_only_its_own_session(connected: Daemon) -> None:
    keep = np.arange(1 << 16, dtype=np.int32)
    ptr = to_device(keep)  # this process's session, on the same device
    result = run_client(
        f"""
        import gpupool
        from gpupool import runtime as rt
        kernel = gpupool.Module.from_source({ILLEGAL!r}).get_function("poke")
        kernel((1,), (32,), (0x10,))
        for attempt in range(2):  # the error is sticky, as in CUDA
            try:
                rt.deviceSynchronize()
            except gpupool.CUDARuntimeError as exc:
                print(exc.name)
        """,
        connected.address,
    )
    assert result.returncode == 0, result.stderr
    names = result.stdout.split()
    assert names == ["cudaErrorIllegalAddress"] * 2, result.stdout + result.stderr
    np.testing.assert_array_equal(to_host(ptr, keep), keep)
    kernel = gpupool.Module.from_source(SAXPY).get_function("saxpy")  # new work still runs
    kernel((1,), (1,), (np.float32(1.0), ptr, ptr, np.int32(0)))
    rt.deviceSynchronize()


def test_many_daemons_are_one_list_of_devices(daemon: Daemon) -> None:
    from gpupool.server.daemon import start_daemon

    with start_daemon(backend="emu", emu_devices=2, emu_memory=1 << 30) as second:
        gpupool.connect(f"{daemon.address},{second.address}")
        try:
            assert rt.getDeviceCount() == len(daemon.devices) + 2
            rt.setDevice(rt.getDeviceCount() - 1)
            assert rt.memGetInfo()[1] == 1 << 30  # the second daemon's emulated device
            ptr = to_device(np.arange(4, dtype=np.float64))
            np.testing.assert_array_equal(to_host(ptr, np.zeros(4)), np.arange(4))
        finally:
            gpupool.disconnect()


FILL_PTX = r"""
.version 7.0
.target sm_80
.address_size 64
.visible .entry fill(.param .u64 p, .param .u32 v)
{
    .reg .b32 %r<3>;
    .reg .b64 %rd<4>;
    ld.param.u64 %rd1, [p];
    ld.param.u32 %r1, [v];
    cvta.to.global.u64 %rd2, %rd1;
    mov.u32 %r2, %tid.x;
    mul.wide.u32 %rd3, %r2, 4;
    add.s64 %rd2, %rd2, %rd3;
    st.global.u32 [%rd2], %r1;
    ret;
}
"""


def test_ptx_modules(connected: Daemon) -> None:
    if connected.backend == "emu":
        with pytest.raises(gpupool.CUDARuntimeError, match=r"cudaErrorNotSupported.*PTX"):
            gpupool.Module.from_ptx(FILL_PTX)
        return
    fill = gpupool.Module.from_ptx(FILL_PTX).get_function("fill")
    ptr = rt.malloc(32 * 4)
    fill((1,), (32,), (ptr, np.uint32(7)))
    np.testing.assert_array_equal(to_host(ptr, np.zeros(32, np.uint32)), 7)


def test_a_lost_daemon_is_a_connection_error() -> None:
    from gpupool.server.daemon import start_daemon

    with pytest.raises(gpupool.ConnectionLost, match="cannot reach daemon"):
        gpupool.connect("127.0.0.1:1", timeout=0.5)
    daemon = start_daemon(backend="emu", emu_devices=1, emu_memory=1 << 30)
    try:
        gpupool.connect(daemon.address)
        ptr = rt.malloc(1024)
        daemon.stop(grace=0)
        with pytest.raises(gpupool.ConnectionLost) as caught:
            rt.memset(ptr, 0, 1024)
            rt.deviceSynchronize()
        assert caught.value.__cause__ is not None or "ended the session" in str(caught.value)
        big = np.zeros(64 << 20, np.uint8)  # enough chunks to fill the client's send queue
        with pytest.raises(gpupool.ConnectionLost):
            rt.memcpy(ptr, big.ctypes.data, big.nbytes, rt.memcpyHostToDevice)
    finally:
        gpupool.disconnect()  # returns: the dead stream's queue does not block it
        daemon.stop()


def test_one_daemon_a_port() -> None:
    from gpupool.server.daemon import start_daemon

    with start_daemon(backend="emu", emu_devices=1, emu_memory=1 << 30) as first:
        with pytest.raises(OSError, match="cannot listen"):
            start_daemon(listen=first.address, backend="emu", emu_devices=1)
