"""Prepared launches: a configuration checked once, then launched with each launch's own
arguments; never used for another configuration, and gone with its function or stream.

Mostly driven on the emulator through the session executor (no sockets), the launches encoded
as the client encodes them (``gpupool.client.launches``); the last test goes through the shim
to real daemons, over every transport.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pytest

import gpupool
from gpupool import runtime as rt
from gpupool.client.launches import kernel_args
from gpupool.proto import gpupool_pb2 as pb
from gpupool.server import launches
from gpupool.server.backends.emu import EmuBackend, MemoryLedger
from gpupool.server.daemon import Daemon
from gpupool.server.executor import SessionExecutor
from tests.conftest import run_request as run

KERNELS = r"""
extern "C" __global__ void add(int* x, int v) { x[blockIdx.x * blockDim.x + threadIdx.x] += v; }
extern "C" __global__ void shape(int* out) {
    out[blockIdx.x * blockDim.x + threadIdx.x] = gridDim.x * 100 + blockDim.x;
}
extern "C" __global__ void keep(double d, float f, short s, double* od, float* of, short* os) {
    *od = d; *of = f; *os = s;
}
"""
SOURCE = (
    KERNELS
    + r"""
#include <assert.h>
extern "C" __global__ void checked(int v) { assert(v != 0); }
"""
)
MODULE, ADD, SHAPE, KEEP, CHECKED = 1, 2, 3, 4, 5


class Device:
    """A device address as a kernel argument (what the shim's arrays expose)."""

    def __init__(self, ptr: int) -> None:
        self.__cuda_array_interface__ = {"data": (ptr, False)}


@pytest.fixture
def executor() -> Iterator[SessionExecutor]:
    ledger = MemoryLedger.create(1 << 30, slots=1)
    executor = SessionExecutor(EmuBackend(0, ledger, slot=0), translate=lambda exc: exc)
    (loaded,) = run(executor, module_load=pb.ModuleLoad(module=MODULE, cuda_source=SOURCE))
    assert not loaded.HasField("error"), loaded.error
    for handle, name in ((ADD, "add"), (SHAPE, "shape"), (KEEP, "keep"), (CHECKED, "checked")):
        run(executor, get_function=pb.GetFunction(module=MODULE, name=name, function=handle))
    yield executor
    ledger.close()


def launch(
    function: int,
    args: Sequence[Any],
    grid: int = 1,
    block: int = 1,
    stream: int = 0,
) -> pb.Request:
    types, data = kernel_args(args)
    config = pb.LaunchConfig(
        function=function,
        grid=pb.Dim3(x=grid, y=1, z=1),
        block=pb.Dim3(x=block, y=1, z=1),
        stream=stream,
        arg_types=types,
    )
    return pb.Request(launch=pb.Launch(config=config.SerializeToString(), arg_data=data))


def batch(executor: SessionExecutor, *requests: pb.Request) -> pb.Reply:
    """Run ``requests`` as the client sends them: queued, then a synchronizing call."""
    sync = pb.Request(wait=True, device_synchronize=pb.DeviceSynchronize())
    (reply,) = run(executor, wait=False, batch=pb.Batch(requests=[*requests, sync]))
    return reply


def malloc(executor: SessionExecutor, size: int) -> int:
    (reply,) = run(executor, malloc=pb.Malloc(size=size))
    run(executor, memset=pb.Memset(ptr=reply.ptr, value=0, size=size))
    return reply.ptr


def read(executor: SessionExecutor, ptr: int, size: int) -> bytes:
    return b"".join(
        reply.data for reply in run(executor, memcpy_dtoh=pb.MemcpyDtoH(src=ptr, size=size))
    )


def ints(executor: SessionExecutor, ptr: int, count: int) -> list[int]:
    return np.frombuffer(read(executor, ptr, 4 * count), np.int32).tolist()


def test_each_launch_of_a_prepared_configuration_takes_its_own_arguments(
    executor: SessionExecutor,
) -> None:
    x, y = malloc(executor, 4), malloc(executor, 4)
    requests = [launch(ADD, (Device(x), v)) for v in range(1, 101)]
    requests += [launch(ADD, (Device(y), np.int32(-5))), launch(ADD, (Device(x), 7))]
    assert not batch(executor, *requests).HasField("error")
    assert ints(executor, x, 1) == [sum(range(1, 101)) + 7]
    assert ints(executor, y, 1) == [-5]  # an int32 where the kernel takes an int: same bytes


def test_a_prepared_configuration_is_not_used_for_another_grid_or_block(
    executor: SessionExecutor,
) -> None:
    out = malloc(executor, 4 * 8)
    shapes = [(1, 2), (2, 2), (1, 4), (4, 2)]  # each covers more than the one before
    for grid, block in shapes:
        assert not batch(executor, launch(SHAPE, (Device(out),), grid, block)).HasField("error")
        assert ints(executor, out, grid * block) == [grid * 100 + block] * (grid * block)


def test_arguments_arrive_bit_for_bit(executor: SessionExecutor) -> None:
    od, of, os_ = malloc(executor, 8), malloc(executor, 4), malloc(executor, 2)
    signalling_nan = np.frombuffer(struct.pack("<I", 0x7F800001), np.float32)[0]
    for d, f, s in [(1.5, signalling_nan, -2), (-0.0, np.float32(3.25), 32767)]:
        args = (d, f, np.int16(s), Device(od), Device(of), Device(os_))
        assert not batch(executor, launch(KEEP, args)).HasField("error")
        assert read(executor, od, 8) == struct.pack("<d", d)
        assert read(executor, of, 4) == np.float32(f).tobytes()
        assert read(executor, os_, 2) == struct.pack("<h", s)


def test_a_launch_after_its_module_is_unloaded_fails(executor: SessionExecutor) -> None:
    x = malloc(executor, 4)
    assert not batch(executor, launch(ADD, (Device(x), 1))).HasField("error")
    run(executor, module_unload=pb.ModuleUnload(module=MODULE))
    refused = batch(executor, launch(ADD, (Device(x), 1)))
    assert refused.error.name == "cudaErrorInvalidResourceHandle"
    assert refused.error.message == f"function handle {ADD} does not exist"
    never = batch(executor, launch(99, (Device(x), 1)))
    assert never.error.name == "cudaErrorInvalidResourceHandle"  # as for a handle never made
    assert ints(executor, x, 1) == [1]


def test_a_launch_on_a_destroyed_stream_fails(executor: SessionExecutor) -> None:
    x = malloc(executor, 4)
    run(executor, stream_create=pb.StreamCreate(stream=5))
    assert not batch(executor, launch(ADD, (Device(x), 1), stream=5)).HasField("error")
    run(executor, stream_destroy=pb.StreamDestroy(stream=5))
    refused = batch(executor, launch(ADD, (Device(x), 1), stream=5))
    assert refused.error.name == "cudaErrorInvalidResourceHandle"
    assert "stream handle 5" in refused.error.message
    run(executor, stream_create=pb.StreamCreate(stream=5))  # the handle, made anew
    assert not batch(executor, launch(ADD, (Device(x), 1), stream=5)).HasField("error")
    assert ints(executor, x, 1) == [2]


def test_a_refused_configuration_is_refused_every_time(executor: SessionExecutor) -> None:
    x = malloc(executor, 4)
    for _ in range(2):
        refused = batch(executor, launch(ADD, (Device(x), 1), block=1025))
        assert refused.error.name == "cudaErrorInvalidConfiguration"
        assert "block.x = 1025" in refused.error.message
    later = 50  # a function handle made after a launch named it
    assert batch(executor, launch(later, (Device(x), 1))).error.name == (
        "cudaErrorInvalidResourceHandle"
    )
    run(executor, get_function=pb.GetFunction(module=MODULE, name="add", function=later))
    assert not batch(executor, launch(later, (Device(x), 1))).HasField("error")
    assert ints(executor, x, 1) == [1]


def test_malformed_launches_are_refused(executor: SessionExecutor) -> None:
    x = malloc(executor, 4)
    good = launch(ADD, (Device(x), 1))
    short = pb.Request()
    short.CopyFrom(good)
    short.launch.arg_data = good.launch.arg_data[:-1]
    refused = batch(executor, good, short)
    assert refused.error.name == "cudaErrorInvalidValue"
    assert "15 bytes of arguments; their types take 16" in refused.error.message
    garbage = pb.Request(launch=pb.Launch(config=b"\xff\xff"))
    assert batch(executor, garbage).error.message == "malformed launch configuration"
    unknown = pb.Request()
    unknown.CopyFrom(good)
    config = pb.LaunchConfig.FromString(good.launch.config)
    config.arg_types = bytes([pb.UINT64, 99])
    unknown.launch.config = config.SerializeToString()
    refused = batch(executor, unknown)
    assert refused.error.name == "cudaErrorInvalidValue"
    assert refused.error.message == "argument 1 has no known type (code 99)"
    too_few = batch(executor, launch(ADD, (Device(x),)))
    assert too_few.error.name == "cudaErrorInvalidValue"
    assert "takes 2 arguments, got 1" in too_few.error.message
    assert ints(executor, x, 1) == [1]  # the good launch ran; the batch went on


def test_past_the_bound_the_oldest_configuration_goes(
    executor: SessionExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(launches, "MAX_PREPARED", 2)
    out = malloc(executor, 4 * 8)
    for grid in (1, 2, 4, 1, 8, 2):
        assert not batch(executor, launch(SHAPE, (Device(out),), grid, 1)).HasField("error")
        assert ints(executor, out, grid) == [grid * 100 + 1] * grid


def test_a_sticky_error_in_a_batch_is_reported_at_once_and_ends_it(
    executor: SessionExecutor,
) -> None:
    x = malloc(executor, 4)
    requests = [launch(ADD, (Device(x), 1)), launch(CHECKED, (np.int32(0),))]
    requests += [launch(ADD, (Device(x), 1))] * 3
    (reply,) = run(executor, wait=False, batch=pb.Batch(requests=requests))  # none waits
    assert reply.error.name == "cudaErrorAssert"
    assert executor.poisoned
    assert ints(executor, x, 1) == [1]  # nothing ran after the failed launch


def test_repeated_launches_through_the_shim_take_their_own_arguments_and_grid(
    connected: Daemon,
) -> None:
    module = gpupool.Module.from_source(KERNELS)
    add, shape = module.get_function("add"), module.get_function("shape")
    x, out = rt.malloc(4 * 8), rt.malloc(4 * 8)
    rt.memset(x, 0, 4 * 8)
    for value in range(1, 201):  # one configuration, its arguments changing
        add((1,), (1,), (x, value))
    add((2,), (4,), (x, np.int32(1)))  # other grid, block and argument types
    for grid in (1, 4, 2):
        shape((grid,), (2,), (out,))
    host = np.zeros(8, np.int32)
    rt.memcpy(host.ctypes.data, x, host.nbytes, rt.memcpyDeviceToHost)
    assert host.tolist() == [sum(range(1, 201)) + 1] + [1] * 7
    rt.memcpy(host.ctypes.data, out, host.nbytes, rt.memcpyDeviceToHost)
    assert host.tolist() == [202] * 4 + [402] * 4  # the 2 x 2 launch over the 4 x 2 one
