"""The shim's pinned memory over ``shm://``: copies by reference into the client's own pages.

Real daemons on loopback (emulator, and a GPU where there is one). Whether a worker maps a
block is read from the worker's ``/proc/PID/maps``, where the block's memfd shows by its name
(``gpupool-pinned-CLIENTPID-ID``); nothing here times anything.
"""

from __future__ import annotations

import ctypes
import fcntl
import gc
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest

import gpupool
from gpupool import runtime as rt
from gpupool.client import addressing, context
from gpupool.client.session import Session
from gpupool.cupy.cuda.pinned_memory import PinnedMemory, PinnedMemoryPointer
from gpupool.errors import CUDARuntimeError
from gpupool.proto import gpupool_pb2 as pb
from gpupool.server.backends.emu import EmuBackend, MemoryLedger
from gpupool.server.daemon import Daemon, start_daemon
from gpupool.server.executor import SessionExecutor
from gpupool.server.host_memory import ENV_LIMIT, SharedHostMemory
from gpupool.transport import host_blocks, memfd
from gpupool.transport.frames import SHARE
from gpupool.transport.links import Endpoint
from gpupool.transport.links.frame_links import ShmLink, open_shm
from tests.conftest import run_request as run

MiB = 1 << 20


def pinned(size: int) -> np.ndarray:
    """A uint8 array over a fresh block of the shim's pinned memory."""
    return np.frombuffer(PinnedMemoryPointer(PinnedMemory(size), 0), np.uint8, size)


def block_id(array: np.ndarray) -> int:
    found = host_blocks.find(memoryview(array))
    assert found is not None
    return found[0].id


def mapped_elsewhere(block: int) -> bool:
    """Whether a process other than this one (a worker) maps this process's block."""
    name = f"gpupool-pinned-{os.getpid()}-{block}"
    for maps in Path("/proc").glob("[0-9]*/maps"):
        if maps.parent.name == str(os.getpid()):
            continue
        try:
            if name in maps.read_text():
                return True
        except OSError:  # gone, or another user's
            continue
    return False


def random_bytes(size: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8)


def digest(data: np.ndarray) -> bytes:
    return hashlib.sha256(data).digest()


def test_pinned_copies_keep_every_byte_on_every_transport(
    connected: Daemon, transport: str
) -> None:
    """From one block at an offset, into another at another offset, and a third whole;
    over shm:// by reference (the worker maps the blocks), elsewhere as bytes."""
    size = 3 * MiB + 123
    source, target, whole = pinned(4 * MiB), pinned(4 * MiB), pinned(size)
    source[:] = random_bytes(source.size, 1)
    first, second = rt.malloc(size), rt.malloc(size)
    rt.memcpy(first, source[777:].ctypes.data, size, rt.memcpyHostToDevice)
    rt.memcpyAsync(second, source[5:].ctypes.data, size, rt.memcpyHostToDevice, 0)
    rt.memcpy(target[4096:].ctypes.data, first, size, rt.memcpyDeviceToHost)
    rt.memcpy(whole.ctypes.data, second, size, rt.memcpyDeviceToHost)
    assert digest(target[4096 : 4096 + size]) == digest(source[777 : 777 + size])
    assert digest(whole) == digest(source[5 : 5 + size])
    assert not target[:4096].any() and not target[4096 + size :].any()
    by_reference = transport == "shm"
    assert [mapped_elsewhere(block_id(a)) for a in (source, target, whole)] == [by_reference] * 3
    rt.free(first)
    rt.free(second)


def test_ordinary_arrays_and_small_pinned_copies_still_travel(emu_shm: Daemon) -> None:
    host = random_bytes(5 * MiB, 2)
    small = pinned(64 << 10)  # no larger than the inline limit: travels inside its message
    small[:] = host[: small.size]
    ptr = rt.malloc(host.size)
    rt.memcpy(ptr, host.ctypes.data, host.size, rt.memcpyHostToDevice)
    rt.memcpy(ptr, small.ctypes.data, small.size, rt.memcpyHostToDevice)
    back = np.empty_like(host)
    rt.memcpy(back.ctypes.data, ptr, back.size, rt.memcpyDeviceToHost)
    assert digest(back) == digest(host)
    assert not mapped_elsewhere(block_id(pinned(MiB)))  # never used: never shared


@pytest.fixture
def emu_shm() -> Iterator[Daemon]:
    with start_daemon(backend="emu", emu_devices=1, emu_memory=1 << 30) as daemon:
        gpupool.connect(daemon.address, transport="shm")
        yield daemon
        gpupool.disconnect()


@pytest.fixture
def shm_session(daemon: Daemon) -> Iterator[Session]:
    """A session over shm:// on ``daemon``'s device 0 (emulator, and GPU where there is one)."""
    gpupool.connect(daemon.address, transport="shm")
    yield context.current().session()
    gpupool.disconnect()


def test_a_freed_block_is_unmapped_by_the_worker(shm_session: Session) -> None:
    kept, freed = pinned(2 * MiB), pinned(2 * MiB)
    ptr = rt.malloc(2 * MiB)
    rt.memcpy(ptr, kept.ctypes.data, kept.size, rt.memcpyHostToDevice)
    rt.memcpy(ptr, freed.ctypes.data, freed.size, rt.memcpyHostToDevice)
    kept_id, freed_id = block_id(kept), block_id(freed)
    assert mapped_elsewhere(kept_id) and mapped_elsewhere(freed_id)
    del freed
    gc.collect()
    rt.memGetInfo()  # the drop travels ahead of the next message
    assert mapped_elsewhere(kept_id) and not mapped_elsewhere(freed_id)
    rt.memcpy(kept.ctypes.data, ptr, kept.size, rt.memcpyDeviceToHost)  # still shared


def test_a_block_freed_before_a_batch_or_a_ring_read_is_dropped_and_the_session_goes_on(
    shm_session: Session,
) -> None:
    """The drop goes ahead of a batch too, and never into the middle of a ring transfer."""
    ptr = rt.malloc(2 * MiB)
    freed = pinned(2 * MiB)
    rt.memcpy(ptr, freed.ctypes.data, freed.size, rt.memcpyHostToDevice)
    freed_id = block_id(freed)
    del freed
    gc.collect()
    rt.memsetAsync(ptr, 7, 2 * MiB)  # queued: the next call goes out as a batch
    plain = np.empty(2 * MiB, np.uint8)  # not pinned: through the ring
    rt.memcpy(plain.ctypes.data, ptr, plain.size, rt.memcpyDeviceToHost)
    assert (plain == 7).all()
    assert not mapped_elsewhere(freed_id)
    free, _ = rt.memGetInfo()  # the session goes on
    assert free > 0


def test_forged_references_are_refused_and_the_session_goes_on(shm_session: Session) -> None:
    size = 2 * MiB
    host = pinned(size)
    ptr = rt.malloc(size)
    rt.memcpy(ptr, host.ctypes.data, size, rt.memcpyHostToDevice)  # shares the block
    block = block_id(host)
    raw = addressing.raw(ptr)  # the daemon's own address, as requests on the wire carry it
    forged = [
        (pb.HostRef(block=block + 1000, offset=0), size, "was not shared with this session"),
        (pb.HostRef(block=block, offset=1), size, f"offset 1 of host block {block} reach past"),
        (pb.HostRef(block=block, offset=1 << 62), 1, "reach past"),
    ]
    for ref, n, said in forged:
        with pytest.raises(CUDARuntimeError, match=said) as refused:
            shm_session.call(pb.Request(memcpy_htod=pb.MemcpyHtoD(dst=raw, size=n, host=ref)))
        assert refused.value.name == "cudaErrorInvalidValue"
        with pytest.raises(CUDARuntimeError, match=said):
            shm_session.call(pb.Request(memcpy_dtoh=pb.MemcpyDtoH(src=raw, size=n, host=ref)))
    outside = pb.MemcpyHtoD(dst=raw + size, size=size, host=pb.HostRef(block=block))
    with pytest.raises(CUDARuntimeError, match="host-to-device copy"):
        shm_session.call(pb.Request(memcpy_htod=outside))
    host[:] = 9  # the session goes on, with its block
    rt.memcpy(ptr, host.ctypes.data, size, rt.memcpyHostToDevice)
    back = np.empty(size, np.uint8)
    rt.memcpy(back.ctypes.data, ptr, size, rt.memcpyDeviceToHost)
    assert (back == 9).all()


def test_a_reference_over_a_transport_without_shared_memory_is_refused(
    daemon: Daemon,
) -> None:
    for transport in ("tcp", "grpc"):
        gpupool.connect(daemon.address, transport=transport)
        try:
            session = context.current().session()
            ptr = addressing.raw(rt.malloc(MiB))
            copy = pb.MemcpyHtoD(dst=ptr, size=MiB, host=pb.HostRef(block=1))
            with pytest.raises(CUDARuntimeError, match="only over shm://"):
                session.call(pb.Request(memcpy_htod=copy))
            assert rt.memGetInfo()[0] > 0
        finally:
            gpupool.disconnect()


@pytest.fixture
def raw_shm(daemon: Daemon) -> Iterator[ShmLink]:
    """An open shm:// session's link, to send frames a well-behaved client never sends."""
    url = next(url for url in daemon.endpoints if urlsplit(url).scheme == "shm")
    link = open_shm(Endpoint(url), 10)
    assert isinstance(link, ShmLink)
    session = Session(link, 0)
    yield link
    session.close()


def share(link: ShmLink, block: int, fd: int | None) -> pb.Reply:
    """Send a SHARE frame (with ``fd`` on its payload byte, or none) and read its answer."""
    message = pb.ShareHost(block=block).SerializeToString()
    if fd is None:
        link.frames.send(SHARE, message, 1)
        link.frames.sock.sendall(b"\0")
    else:
        link.frames.send_with_fd(SHARE, message, fd)
    kind, answer, _size = link.frames.receive()
    assert kind == SHARE
    return pb.Reply.FromString(answer)


def test_bad_descriptors_are_refused_by_name_and_the_session_goes_on(
    raw_shm: ShmLink, tmp_path: Path
) -> None:
    read_end, write_end = os.pipe()
    plain = tmp_path / "plain"
    plain.write_bytes(b"x" * 4096)
    unsealed = os.memfd_create("unsealed")
    os.ftruncate(unsealed, 4096)
    empty = memfd.create("empty", 0)
    good = memfd.create("good", 4096)
    frozen = os.memfd_create("frozen", os.MFD_ALLOW_SEALING)  # sealed against writes too
    os.ftruncate(frozen, 4096)
    seals = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL
    fcntl.fcntl(frozen, fcntl.F_ADD_SEALS, seals)
    try:
        with plain.open("rb") as plain_file:
            cases = [
                (101, read_end, "not a file"),
                (102, plain_file.fileno(), "not a memfd sealed against resizing"),
                (103, unsealed, "not a memfd sealed against resizing"),
                (104, empty, "is empty"),
                (105, None, "came without a file descriptor"),
                (107, frozen, "cannot be mapped for writing"),
                (0, good, "is zero"),
            ]
            for block, fd, said in cases:
                error = share(raw_shm, block, fd).error
                assert error.name == "cudaErrorInvalidValue" and said in error.message
        assert not share(raw_shm, 106, good).HasField("error")
        again = share(raw_shm, 106, good).error
        assert again.name == "cudaErrorInvalidValue" and "already shared" in again.message
    finally:
        for fd in (read_end, write_end, unsealed, empty, good, frozen):
            os.close(fd)
    raw_shm.send(pb.Request(wait=True, mem_get_info=pb.MemGetInfo()))
    assert raw_shm.receive().mem_info.total > 0


def test_past_the_share_cap_copies_go_through_the_ring(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(ENV_LIMIT, "3MiB")  # the workers inherit it
    with start_daemon(backend="emu", emu_devices=1, emu_memory=1 << 30) as daemon:
        gpupool.connect(daemon.address, transport="shm")
        try:
            first, second = pinned(2 * MiB), pinned(2 * MiB)
            first[:] = random_bytes(first.size, 3)
            ptr = rt.malloc(first.size)
            rt.memcpy(ptr, first.ctypes.data, first.size, rt.memcpyHostToDevice)
            rt.memcpy(second.ctypes.data, ptr, second.size, rt.memcpyDeviceToHost)
            assert digest(second) == digest(first)
            assert mapped_elsewhere(block_id(first)) and not mapped_elsewhere(block_id(second))
        finally:
            gpupool.disconnect()


class RecordingBackend:
    """Stands in for a backend: which host buffers are registered with the driver now."""

    def __init__(self) -> None:
        self.registered: list[int] = []

    def register_host(self, buffer: memoryview) -> None:
        self.registered.append(len(buffer))

    def unregister_host(self, buffer: memoryview) -> None:
        self.registered.remove(len(buffer))


def test_the_worker_registers_what_it_maps_and_nothing_past_its_cap() -> None:
    backend = RecordingBackend()
    shared = SharedHostMemory(backend, lambda exc: exc, limit=3 * 4096)  # type: ignore[arg-type]
    shared.add(1, memfd.create("one", 4096))
    shared.add(2, memfd.create("two", 2 * 4096))
    with pytest.raises(CUDARuntimeError, match="at most 1024 blocks and 12288 bytes") as full:
        shared.add(3, memfd.create("three", 1))
    assert full.value.name == "cudaErrorMemoryAllocation"
    assert (len(shared), shared.shared_bytes, backend.registered) == (2, 3 * 4096, [4096, 8192])
    view = shared.view(pb.HostRef(block=2, offset=4096), 4096)
    assert len(view) == 4096 and not view.readonly
    del view
    shared.drop([1, 99])  # 99 was never shared: nothing to undo
    assert (len(shared), backend.registered) == (1, [8192])
    shared.add(3, memfd.create("three", 4096))  # room again
    shared.close()
    assert (len(shared), shared.shared_bytes, backend.registered) == (0, 0, [])


def test_the_client_finds_the_block_a_buffer_lies_in() -> None:
    block = host_blocks.HostBlock(4 * MiB)
    whole = np.frombuffer((ctypes.c_char * block.size).from_address(block.address), np.uint8)
    assert host_blocks.find(memoryview(whole)) == (block, 0)
    assert host_blocks.find(memoryview(whole[123:4567])) == (block, 123)
    assert host_blocks.find(memoryview(np.empty(MiB, np.uint8))) is None
    small = host_blocks.HostBlock(host_blocks.SHARE_MIN - 1)  # a plain map: never shared
    assert small.fd is None
    told: list[int] = []

    class Holder:
        def forget(self, block: int) -> None:
            told.append(block)

    holder = Holder()
    block.shared_with(holder)
    number = block.id
    del whole, block
    gc.collect()
    assert told == [number]


def test_a_shared_copy_carries_no_bytes_of_its_own() -> None:
    """A reference copy with inline data, or with a payload beside it, is refused (the
    payload still read off the wire), and a held error is reported without running it."""
    ledger = MemoryLedger.create(64 * MiB, slots=1)
    backend = EmuBackend(0, ledger, slot=0)
    shared = SharedHostMemory(backend, lambda exc: exc, limit=MiB)
    shared.add(7, memfd.create("seven", MiB))
    executor = SessionExecutor(backend, lambda exc: exc, shared)
    try:
        ptr = run(executor, malloc=pb.Malloc(size=MiB))[0].ptr
        ref = pb.HostRef(block=7)
        both = pb.MemcpyHtoD(dst=ptr, size=4, host=ref, data=b"abcd")
        assert "both inline and shared" in run(executor, memcpy_htod=both)[0].error.message
        drained: list[object] = []
        beside = pb.Request(wait=True, memcpy_htod=pb.MemcpyHtoD(dst=ptr, size=MiB, host=ref))
        replies = list(executor.handle_payload(beside, MiB, drained.append))
        assert len(drained) == 1 and replies[0].error.name == "cudaErrorInvalidValue"
        run(executor, wait=False, memset=pb.Memset(ptr=ptr + MiB, value=1, size=1))  # held
        copy = pb.MemcpyHtoD(dst=ptr, size=MiB, host=ref)
        assert run(executor, memcpy_htod=copy)[0].error.name == "cudaErrorInvalidValue"
        assert run(executor, memcpy_htod=copy) == [pb.Reply()]  # nothing left pending
    finally:
        shared.close()
        ledger.close()
