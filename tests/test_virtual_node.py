"""A virtual node: devices of several daemons as one program's, copying to each other directly.

Real daemons on loopback (emulated devices): unified addressing, peer copies worker to worker
on one daemon and across daemons (no payload byte through the client, seen in its stats),
cupy.cuda.nccl in one process and cupyx.distributed in two, devices working while the
program turns to another, a tenant's grant refused for another tenant's session, and the
16-device example run by ``gpupool run``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator

import numpy as np
import pytest

import gpupool
import gpupool.cupy as cp
from gpupool import grants
from gpupool import runtime as rt
from gpupool.client import addressing
from gpupool.client.context import DaemonLinks, current
from gpupool.client.lease import allocate
from gpupool.client.session import Session
from gpupool.cupy.cuda import nccl
from gpupool.errors import CUDARuntimeError
from gpupool.proto import gpupool_pb2 as pb
from gpupool.proto import gpupool_pb2_grpc as pb_grpc
from gpupool.proto.limits import GRPC_OPTIONS
from gpupool.scheduler.service import start_scheduler
from gpupool.server.confinement import ENV_CONFINE, ENV_TRUSTED
from gpupool.server.daemon import Daemon, start_daemon
from tests.conftest import EXAMPLES, GPUPOOL
from tests.test_pool import FAST, SECRET, join

MiB = 1 << 20
# Peer links are dialled by the workers themselves, which a confined emulator worker cannot do
# yet: until the front dials for its workers, a confined worker's PeerConnect fails with
# cudaErrorPeerAccessUnsupported.
pytestmark = pytest.mark.usefixtures("unconfined_workers")
UNCONFINED = {ENV_CONFINE: "0", ENV_TRUSTED: "1"}  # for the programs the tests start


@pytest.fixture(scope="module")
def daemons() -> Iterator[list[Daemon]]:
    """Two bare daemons of two emulated devices: ordinals 0-1 on one, 2-3 on the other."""
    started = [start_daemon(backend="emu", emu_devices=2, emu_memory=1 << 30) for _ in range(2)]
    yield started
    for daemon in started:
        daemon.stop()


@pytest.fixture
def node(daemons: list[Daemon], monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("GPUPOOL_TRANSPORT", raising=False)
    gpupool.connect([daemon.address for daemon in daemons])
    yield
    gpupool.disconnect()


def moved() -> int:
    stats = gpupool.stats()
    return stats.bytes_sent + stats.bytes_received


def test_pointers_name_their_device_and_default_copies_cross_daemons(node: None) -> None:
    host = np.arange(MiB // 4, dtype=np.float32)
    pointers = []
    for device in range(4):
        rt.setDevice(device)
        pointers.append(rt.malloc(host.nbytes))
        assert addressing.device_of(pointers[-1], -1) == device
    rt.memcpy(pointers[0], host.ctypes.data, host.nbytes, rt.memcpyDefault)
    before = moved()
    rt.setDevice(3)  # a copy names its devices by its pointers, whatever the current one
    rt.memcpy(pointers[1], pointers[0], host.nbytes, rt.memcpyDefault)  # same daemon
    rt.memcpy(pointers[2], pointers[1], host.nbytes, rt.memcpyDeviceToDevice)  # across
    rt.memcpyPeer(pointers[3], 3, pointers[2], 2, host.nbytes)
    assert moved() == before  # not one payload byte through the client
    for pointer in pointers:
        out = np.zeros_like(host)
        rt.memcpy(out.ctypes.data, pointer, host.nbytes, rt.memcpyDefault)
        assert np.array_equal(out, host)
    assert moved() == before + 4 * host.nbytes
    assert rt.deviceCanAccessPeer(0, 3) == 1 and rt.deviceCanAccessPeer(1, 1) == 0
    small = np.arange(100, dtype=np.uint8)  # under 64 KiB: through the destination's ring
    rt.setDevice(0)
    tiny = rt.malloc(100)
    rt.memcpy(tiny, small.ctypes.data, 100, rt.memcpyHostToDevice)
    rt.setDevice(1)
    other = rt.malloc(100)
    rt.memcpy(other, tiny, 100, rt.memcpyDefault)
    back = np.zeros_like(small)
    rt.memcpy(back.ctypes.data, other, 100, rt.memcpyDeviceToHost)
    assert np.array_equal(back, small)
    with pytest.raises(CUDARuntimeError, match="cudaErrorInvalidValue"):
        rt.memcpyPeer(pointers[3], 2, pointers[0], 0, 16)  # pointer 3 is not on device 2


def test_peer_access_is_enabled_once_and_disabled_once(node: None) -> None:
    rt.setDevice(0)
    rt.deviceEnablePeerAccess(2)
    with pytest.raises(CUDARuntimeError, match="cudaErrorPeerAccessAlreadyEnabled"):
        rt.deviceEnablePeerAccess(2)
    rt.deviceDisablePeerAccess(2)
    with pytest.raises(CUDARuntimeError, match="cudaErrorPeerAccessNotEnabled"):
        rt.deviceDisablePeerAccess(2)
    with pytest.raises(CUDARuntimeError, match="cudaErrorInvalidDevice"):
        rt.deviceEnablePeerAccess(9)
    assert cp.cuda.Device(0).can_access_peer(3)


def test_a_bad_peer_copy_is_refused_on_both_devices_and_both_go_on(node: None) -> None:
    rt.setDevice(1)
    source = rt.malloc(4096)
    rt.setDevice(2)
    target = rt.malloc(4096)
    rt.memcpyPeer(target, 2, source + 4000, 1, 200)  # runs past the source's end
    with pytest.raises(CUDARuntimeError, match="peer copy source of 200 bytes"):
        rt.deviceSynchronize()  # device 2 got the refusal in place of the data
    rt.setDevice(1)
    with pytest.raises(CUDARuntimeError, match="peer copy source of 200 bytes"):
        rt.deviceSynchronize()
    rt.memcpyPeer(target + 4000, 2, source, 1, 200)  # now the destination runs past
    with pytest.raises(CUDARuntimeError, match="peer copy destination"):
        rt.setDevice(2)
        rt.deviceSynchronize()
    data = np.arange(4096, dtype=np.uint8)
    rt.memcpy(source, data.ctypes.data, 4096, rt.memcpyHostToDevice)
    rt.memcpyPeer(target, 2, source, 1, 4096)  # both sessions go on
    out = np.zeros_like(data)
    rt.memcpy(out.ctypes.data, target, 4096, rt.memcpyDeviceToHost)
    assert np.array_equal(out, data)


def test_cupy_moves_arrays_between_devices_worker_to_worker(node: None) -> None:
    with cp.cuda.Device(0):
        a = cp.arange(24, dtype=cp.float64).reshape(4, 6)
    before = moved()
    with cp.cuda.Device(3):
        copied = a.copy()
        transposed = a.T.copy()  # made contiguous on device 0 first
        as_array = cp.asarray(a)
        fortran = cp.array(a, order="F")
        memory = cp.empty_like(copied)
        memory.data.copy_from_device(a.data, a.nbytes)
    assert moved() == before
    for array in (copied, transposed, as_array, fortran, memory):
        assert array.device.id == 3
    assert np.array_equal(copied.get(), np.arange(24.0).reshape(4, 6))
    assert np.array_equal(transposed.get(), np.arange(24.0).reshape(4, 6).T)
    assert np.array_equal(as_array.get() + fortran.get(), 2 * np.arange(24.0).reshape(4, 6))
    assert np.array_equal(memory.get(), copied.get())


def test_nccl_in_one_process_gives_numpys_results(node: None) -> None:
    count = 4
    comms = nccl.NcclCommunicator.initAll(count)
    rng = np.random.default_rng(1)
    hosts = [rng.standard_normal(1001).astype(np.float32) for _ in range(count)]
    arrays, outputs = [], []
    for device in range(count):
        with cp.cuda.Device(device):
            arrays.append(cp.asarray(hosts[device]))
            outputs.append(cp.empty_like(arrays[-1]))
    before = moved()
    nccl.groupStart()
    for device, comm in enumerate(comms):
        with cp.cuda.Device(device):
            comm.allReduce(
                arrays[device].data.ptr,
                outputs[device].data.ptr,
                1001,
                nccl.NCCL_FLOAT32,
                nccl.NCCL_SUM,
                cp.cuda.get_current_stream().ptr,
            )
    nccl.groupEnd()
    for device, comm in enumerate(comms):
        with cp.cuda.Device(device):
            comm.bcast(arrays[device].data.ptr, 1001, nccl.NCCL_FLOAT32, 2, 0)
    gathered, scattered = [], []
    for device, comm in enumerate(comms):
        with cp.cuda.Device(device):
            gathered.append(cp.empty(4 * 1001, cp.float32))
            comm.allGather(arrays[device].data.ptr, gathered[-1].data.ptr, 1001, 7, 0)
            values = cp.arange(8, dtype=cp.int64) * (device + 1)
            scattered.append((values, cp.empty(2, cp.int64)))
            comm.reduceScatter(values.data.ptr, scattered[-1][1].data.ptr, 2, 4, 2, 0)
    assert moved() == before  # none of the collectives' data passed through here
    total = sum(hosts)
    for device in range(count):
        assert np.allclose(outputs[device].get(), total, atol=1e-5)
        assert np.array_equal(arrays[device].get(), hosts[2])
        assert np.array_equal(gathered[device].get(), np.concatenate([hosts[2]] * count))
        assert np.array_equal(scattered[device][1].get(), (np.arange(8) * 4)[2 * device :][:2])
    with pytest.raises(nccl.NcclError):
        comms[0].allReduce(0, 0, 1, nccl.NCCL_BFLOAT16, nccl.NCCL_SUM, 0)


def test_nccl_send_recv_and_reduce_to_a_root(node: None) -> None:
    comms = nccl.NcclCommunicator.initAll([1, 2, 3])
    arrays = []
    for rank, device in enumerate((1, 2, 3)):
        with cp.cuda.Device(device):
            arrays.append((cp.full(10, rank + 1.0), cp.zeros(10)))
    for comm, (values, out) in zip(comms, arrays, strict=True):
        with cp.cuda.Device(comm.device_id()):
            comm.reduce(values.data.ptr, out.data.ptr, 10, nccl.NCCL_FLOAT64, nccl.NCCL_AVG, 1, 0)
    assert np.array_equal(arrays[1][1].get(), np.full(10, 2.0))
    assert not arrays[0][1].get().any()  # only the root's buffer is written
    nccl.groupStart()
    with cp.cuda.Device(3):
        comms[2].send(arrays[2][0].data.ptr, 10, nccl.NCCL_FLOAT64, 0, 0)
    with cp.cuda.Device(1):
        comms[0].recv(arrays[0][1].data.ptr, 10, nccl.NCCL_FLOAT64, 2, 0)
    nccl.groupEnd()
    assert np.array_equal(arrays[0][1].get(), np.full(10, 3.0))
    with pytest.raises(CUDARuntimeError, match="is on device 1"), cp.cuda.Device(2):
        comms[1].send(arrays[0][0].data.ptr, 10, nccl.NCCL_FLOAT64, 0, 0)


def test_a_device_works_while_the_program_turns_to_another(node: None) -> None:
    """Work queued on device 0 is sent when the program turns to device 2, and a wait on
    device 2 does not wait for anything of device 0's."""
    context = current()
    rt.setDevice(1)
    with cp.cuda.Device(0):
        a = cp.ones(1000)
        a *= 3
        assert context.session(0).queued
    assert not context.session(0).queued  # sent on leaving the device
    with cp.cuda.Device(0):
        b = a + 1
    with cp.cuda.Device(2):
        c = cp.zeros(10) + 2
        assert context.session(0).queued is False
        context.session(0).submit(
            pb.Request(memset=pb.Memset(ptr=addressing.raw(b.data.ptr), value=0, size=8))
        )
        assert context.session(0).queued
        assert float(c.sum()) == 20.0  # the wait on device 2 sent device 0's queue first
        assert not context.session(0).queued
    assert float(b[1:].sum()) == 4 * 999


def test_two_processes_meet_with_cupyx_distributed(daemons: list[Daemon]) -> None:
    program = textwrap.dedent(
        """
        import sys
        import numpy as np
        import gpupool, gpupool.cupy as cp
        from gpupool.cupy.cupyx import distributed
        rank = int(sys.argv[1])
        cp.cuda.Device(2 * rank).use()  # one device on each daemon
        comm = distributed.init_process_group(2, rank, port=int(sys.argv[2]))
        x = cp.arange(1 << 16, dtype=cp.float32) * (rank + 1)
        out = cp.empty_like(x)
        comm.all_reduce(x, out)
        y = cp.full(4, float(rank))
        comm.broadcast(y, root=1)
        got = cp.zeros(3, cp.int32)
        comm.send_recv(cp.full(3, rank + 7, cp.int32), got, 1 - rank)
        comm.barrier()
        stats = gpupool.stats()
        print(rank, bool((out.get() == np.arange(1 << 16) * 3).all()), y.get().tolist(),
              got.get().tolist(), stats.bytes_sent + stats.bytes_received)
        """
    )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUPOOL_")}
    env.update(UNCONFINED)
    env["GPUPOOL_DAEMONS"] = ",".join(daemon.address for daemon in daemons)
    ranks = [
        subprocess.Popen(
            [sys.executable, "-c", program, str(rank), str(port)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    outputs = [rank.communicate(timeout=90) for rank in ranks]
    for rank, (_out, err) in zip(ranks, outputs, strict=True):
        assert rank.returncode == 0, err
    lines = sorted(out.split(" ", 1)[1].strip() for out, _err in outputs)
    # each rank moved only what it read back: 256 KiB + 32 B + 12 B
    assert lines == [
        f"True [1.0, 1.0, 1.0, 1.0] [{got}, {got}, {got}] {(1 << 18) + 44}" for got in (7, 8)
    ]


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A scheduler and two pooled daemons of two emulated devices."""
    previous = os.environ.get(grants.ENV_SECRET)
    os.environ[grants.ENV_SECRET] = SECRET.decode()
    db = tmp_path_factory.mktemp("vnode") / "scheduler.db"
    scheduler = start_scheduler("127.0.0.1:0", str(db), SECRET, **FAST)
    members = [join(scheduler, "a", memory=1 << 30), join(scheduler, "b", memory=1 << 30)]
    yield scheduler.address
    for daemon in members:
        daemon.stop()
    scheduler.stop()
    if previous is None:
        del os.environ[grants.ENV_SECRET]
    else:
        os.environ[grants.ENV_SECRET] = previous


def test_a_tenants_grant_cannot_open_a_peer_link_into_another_tenants_session(
    pool: str,
) -> None:
    """Two tenants share one GPU (half each); the other's grant, for that very device, is
    still refused at the front, and the tenant's own grant is accepted."""
    mine = allocate(pool, 1, fraction=0.5, ttl=30)
    theirs = allocate(pool, 1, fraction=0.5, ttl=30)
    sessions = []
    try:
        placement, other = mine.placements[0], theirs.placements[0]
        assert (placement.address, placement.index) == (other.address, other.index)
        import grpc

        channel = grpc.insecure_channel(placement.address, GRPC_OPTIONS)
        info = pb_grpc.DaemonStub(channel).GetInfo(pb.InfoRequest(), timeout=10)
        daemon = DaemonLinks(placement.address, channel, info)
        victim = Session(daemon.open("tcp", 10), placement.index, token=placement.grant)
        intruder = Session(daemon.open("tcp", 10), other.index, token=other.grant)
        friend = Session(daemon.open("tcp", 10), placement.index, token=placement.grant)
        sessions += [victim, intruder, friend]
        url = next(url for url in daemon.endpoints if url.startswith("tcp://"))
        attempt = pb.PeerConnect(link=12345, url=url, key=victim.key, token=other.grant, stripes=1)
        with pytest.raises(CUDARuntimeError, match=r"cudaErrorNotPermitted.*another"):
            intruder.call(pb.Request(peer_connect=attempt))
        attempt.token = ""
        with pytest.raises(CUDARuntimeError, match="cudaErrorNotPermitted"):
            intruder.call(pb.Request(peer_connect=attempt))
        attempt.key = b"\0" * 16  # no session: a guessed key names nothing
        with pytest.raises(CUDARuntimeError, match="no open session has that key"):
            intruder.call(pb.Request(peer_connect=attempt))
        allowed = pb.PeerConnect(link=777, url=url, key=victim.key, token=placement.grant)
        allowed.stripes = 2
        friend.call(pb.Request(peer_connect=allowed))  # the tenant's own grant: admitted
        intruder.call(pb.Request(mem_get_info=pb.MemGetInfo()))  # the refused one goes on
        channel.close()
    finally:
        for session in sessions:
            session.close()
        mine.close()
        theirs.close()


@pytest.mark.timeout(240)
def test_the_16_device_example_under_gpupool_run(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``gpupool run -n 16 --policy spread -- python examples/virtual_node.py`` on four
    pooled daemons of four emulated devices: NumPy's result, no round trip a step."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUPOOL_")}
    env.update(UNCONFINED)
    env[grants.ENV_SECRET] = SECRET.decode()
    monkeypatch.setenv(grants.ENV_SECRET, SECRET.decode())
    db = tmp_path_factory.mktemp("sixteen") / "scheduler.db"
    scheduler = start_scheduler("127.0.0.1:0", str(db), SECRET, **FAST)
    members = [join(scheduler, name, devices=4, memory=1 << 30) for name in "abcd"]
    try:
        result = subprocess.run(
            [
                *GPUPOOL,
                "run",
                "-n",
                "16",
                "--policy",
                "spread",
                "--scheduler",
                scheduler.address,
                "--",
                sys.executable,
                str(EXAMPLES / "virtual_node.py"),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=200,
        )
    finally:
        for daemon in members:
            daemon.stop()
        scheduler.stop()
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0] == "40 steps on 16 device(s): 0.0 round trips a step", result.stdout
    assert lines[-1] == "equal to NumPy's on every device: True"


def test_a_rank_that_refuses_a_collective_ends_every_ranks_walk_at_once(node: None) -> None:
    comms = nccl.NcclCommunicator.initAll(3)
    buffers = []
    for device in range(3):
        with cp.cuda.Device(device):
            buffers.append(cp.ones(1000, cp.float32))
    with cp.cuda.Device(1):  # rank 1 receives into too small a buffer, an allocation of its own
        small = cp.cuda.MemoryPointer(cp.cuda.memory.Memory(40), 0)
    start = time.monotonic()
    nccl.groupStart()
    for device, comm in enumerate(comms):
        target = small if device == 1 else buffers[device].data
        with cp.cuda.Device(device):
            comm.allReduce(buffers[device].data.ptr, target.ptr, 1000, 7, 0, 0)
    nccl.groupEnd()
    for device in range(3):
        with pytest.raises(CUDARuntimeError, match="collective receive buffer"):
            rt.setDevice(device)
            rt.deviceSynchronize()
    assert time.monotonic() - start < 20  # not the 60 s a stopped neighbour would cost
    for device, comm in enumerate(comms):  # and every rank goes on (its buffers undefined)
        with cp.cuda.Device(device):
            buffers[device].fill(1)
            comm.allReduce(buffers[device].data.ptr, buffers[device].data.ptr, 1000, 7, 0, 0)
    for array in buffers:
        assert float(array.sum()) == 3000.0
