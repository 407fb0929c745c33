"""gpupool.torch against real daemons: tensors on the pool, ATen operations run by the daemon.

Every test compares with PyTorch on the CPU. The emulator runs PyTorch's CPU kernels, so the
results are equal, not just close; on a GPU daemon (the ``gpu`` mark) PyTorch's CUDA kernels
run, and results are compared within float tolerance.
"""

from __future__ import annotations

import importlib.util
import io
import struct
import subprocess
import sys
from collections.abc import Iterator
from unittest import mock

import pytest
import torch
from torch import nn

import gpupool
import gpupool.torch as gt
from gpupool.errors import CUDARuntimeError
from gpupool.proto import gpupool_pb2 as pb
from gpupool.server.daemon import Daemon
from gpupool.torch.cuda import cuda_as_pool
from tests.conftest import EXAMPLES, GPUPOOL

DEV = torch.device("gpupool", 0)
# a confined worker cannot make torch's lazy imports from an interpreter only root may read
pytestmark = pytest.mark.usefixtures("unconfined_workers")


@pytest.fixture(scope="module")
def pool(daemon: Daemon) -> Iterator[Daemon]:
    gpupool.connect(daemon.address)
    yield daemon
    gpupool.disconnect()


def close(device_result: torch.Tensor, expected: torch.Tensor) -> None:
    assert device_result.device.type == "gpupool"
    torch.testing.assert_close(device_result.cpu(), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "dtype",
    [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.bool],
)
def test_copies_both_ways_keep_every_dtype(pool: Daemon, dtype: torch.dtype) -> None:
    host = (torch.arange(24) % 5).reshape(2, 3, 4).to(dtype)
    device = host.to("gpupool")
    assert device.device == DEV and device.dtype == dtype and device.shape == host.shape
    assert torch.equal(device.cpu(), host)
    assert torch.equal(device.transpose(0, 2).cpu(), host.transpose(0, 2))  # a strided view
    assert device[1, :, 2].tolist() == host[1, :, 2].tolist()


def test_operations_match_the_cpu(pool: Daemon) -> None:
    torch.manual_seed(1)
    a, b = torch.randn(5, 7), torch.randn(7, 3)
    da, db = a.to(DEV), b.to(DEV)
    close(da @ db, a @ b)
    close((da * 2 + 1).relu().sum(dim=0), (a * 2 + 1).relu().sum(dim=0))
    close(torch.softmax(da, dim=-1), torch.softmax(a, dim=-1))
    close(torch.cat([da, da[:, :2]], dim=1), torch.cat([a, a[:, :2]], dim=1))
    close(da.t().contiguous().view(-1)[3:9], a.t().contiguous().view(-1)[3:9])
    close(da.mean(), a.mean())
    close(da.max(dim=1).values, a.max(dim=1).values)
    close(torch.where(da > 0, da, torch.tensor(0.5)), torch.where(a > 0, a, torch.tensor(0.5)))
    inplace = da.clone()
    inplace.mul_(3).add_(db.sum())
    close(inplace, a * 3 + b.sum())
    close(
        torch.zeros(3, 2, device=DEV) + torch.arange(2, device=DEV),
        torch.zeros(3, 2) + torch.arange(2),
    )
    assert (da > 0).sum().item() == int((a > 0).sum())


def test_data_dependent_operations_run_on_the_host(pool: Daemon) -> None:
    a = torch.tensor([[0.0, 1.5], [-2.0, 0.0]])
    da = a.to(DEV)
    before = gt.HOST_OPS["nonzero.default"]
    close(torch.nonzero(da), torch.nonzero(a))
    assert gt.HOST_OPS["nonzero.default"] == before + 1
    close(da[da != 0], a[a != 0])
    assert torch.equal(da, da.clone()) and not torch.equal(da, da + 1)


def test_mixed_cpu_and_pool_programs(pool: Daemon) -> None:
    a = torch.randn(4)
    close(a.to(DEV) * torch.tensor(3.0), a * 3.0)  # a CPU scalar joins device tensors
    with pytest.raises(RuntimeError, match="same device"):
        _ = a.to(DEV) + torch.ones(4)
    target = torch.empty(4)
    target.copy_(a.to(DEV) + 1)
    assert torch.equal(target, a + 1)
    moved = torch.empty(4, device=DEV)
    moved.copy_(a)
    assert torch.equal(moved.cpu(), a)


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 2))


@pytest.mark.parametrize(
    "make",
    [
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
        lambda p: torch.optim.Adam(p, lr=1e-2, foreach=True),
        lambda p: torch.optim.AdamW(p, lr=1e-2, foreach=False),
    ],
    ids=["sgd-momentum", "adam-foreach", "adamw-for-loop"],
)
def test_training_matches_the_cpu(pool: Daemon, make: object) -> None:
    torch.manual_seed(0)
    cpu_model = _mlp()
    pool_model = _mlp()
    pool_model.load_state_dict(cpu_model.state_dict())
    pool_model.to(DEV)
    assert all(p.device == DEV and isinstance(p, nn.Parameter) for p in pool_model.parameters())
    x, y = torch.randn(32, 6), torch.randn(32, 2)
    losses = []
    for model, inputs, targets in ((cpu_model, x, y), (pool_model, x.to(DEV), y.to(DEV))):
        optimizer = make(model.parameters())  # type: ignore[operator]
        run = []
        for _ in range(4):
            optimizer.zero_grad()
            loss = nn.functional.mse_loss(model(inputs), targets)
            loss.backward()
            optimizer.step()
            run.append(loss.item())
        losses.append(run)
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)
    for cpu_param, pool_param in zip(cpu_model.parameters(), pool_model.parameters(), strict=True):
        close(pool_param.detach(), cpu_param.detach())


def test_a_step_makes_one_round_trip_reading_the_loss_and_none_otherwise(pool: Daemon) -> None:
    torch.manual_seed(0)
    model = _mlp().to(DEV)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.randn(8, 6).to(DEV), torch.randn(8, 2).to(DEV)

    def step() -> torch.Tensor:
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        return loss

    step().item()  # warm: plans made, the pool holds every size
    stats = gpupool.stats()
    before = stats.round_trips
    for _ in range(3):
        step()
    assert stats.round_trips == before
    for _ in range(3):
        step().item()
    assert stats.round_trips == before + 3


def test_manual_seed_seeds_the_daemons_generator(pool: Daemon) -> None:
    torch.manual_seed(7)
    on_pool = torch.randn(5, device=DEV)
    dropped = nn.functional.dropout(torch.ones(100, device=DEV), 0.5)
    torch.manual_seed(7)
    on_cpu = torch.randn(5)
    if pool.backend == "emu":  # PyTorch's CPU generator in the session's worker
        close(on_pool, on_cpu)
    kept = (dropped.cpu() != 0).float().mean().item()
    assert 0.2 < kept < 0.8
    torch.manual_seed(7)
    assert torch.equal(torch.randn(5, device=DEV).cpu(), on_pool.cpu())


def test_state_dict_saves_and_loads_onto_the_device(pool: Daemon) -> None:
    model = _mlp().to(DEV)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    loaded = torch.load(buffer)
    for name, tensor in model.state_dict().items():
        assert loaded[name].device == DEV
        assert torch.equal(loaded[name].cpu(), tensor.cpu())
    fresh = _mlp().to(DEV)
    fresh.load_state_dict(loaded)
    close(fresh[0].weight.detach(), model[0].weight.detach().cpu())


def test_synchronize_and_memory_statistics(pool: Daemon) -> None:
    assert gt.is_available() and gt.device_count() == 2
    assert torch.gpupool.device_count() == 2  # type: ignore[attr-defined]
    before = gt.memory_allocated()
    big = torch.ones(1 << 20, device=DEV)
    assert gt.memory_allocated() >= before + (4 << 20)
    gt.synchronize()
    free, total = gt.mem_get_info()
    assert 0 < free <= total
    del big
    close(torch.full((2,), 3.0, device="gpupool:1"), torch.full((2,), 3.0))


QUOTA_PROGRAM = """
import torch
free, total = torch.cuda.mem_get_info()
small = torch.ones(16, device="cuda")
try:
    torch.empty(total + (1 << 20), dtype=torch.uint8, device="cuda")
except torch.OutOfMemoryError as exc:
    print("refused", exc)
print(total, (small * 2).sum().item())
"""


def test_a_tenants_quota_gives_torch_out_of_memory_and_the_session_goes_on() -> None:
    done = subprocess.run(
        [
            *GPUPOOL,
            "run",
            "-n",
            "1",
            "--memory",
            "96MiB",
            "--torch",
            "--",
            sys.executable,
            "-c",
            QUOTA_PROGRAM,
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    refused, figures = done.stdout.splitlines()
    assert refused.startswith("refused gpupool:0: Out of memory allocating")
    total, doubled = figures.split()
    assert 0 < int(total) <= 96 << 20 and float(doubled) == 32.0
    assert "Traceback" not in done.stderr


def _raw_op(op: str, tensors: list[pb.TorchTensor], out: list[pb.TorchTensor]) -> bytes:
    config = pb.TorchOpConfig(
        op=op, args=[pb.TorchValue(tensor=t) for t in tensors], out=out
    ).SerializeToString()
    return config


def test_hostile_operations_are_refused_with_typed_errors(pool: Daemon) -> None:
    session = gpupool.client.context.current().session(0)
    a = torch.ones(4, device=DEV)
    ptr = a._ptr
    spec = pb.TorchTensor(shape=[4], strides=[1], dtype="float32")

    def call(config: bytes, pointers: list[int]) -> None:
        data = struct.pack(f"<{len(pointers)}Q", *pointers)
        session.call(pb.Request(torch_op=pb.TorchOp(config=config, pointers=data)))

    for name in ("from_file.default", "set_.source_Storage", "_foo", "add.no_such_overload"):
        with pytest.raises(CUDARuntimeError, match="cudaErrorNotSupported"):
            call(_raw_op(name, [spec], []), [ptr])
    with pytest.raises(CUDARuntimeError, match="cudaErrorInvalidValue"):  # not its memory
        call(_raw_op("neg.default", [spec], [spec]), [ptr, ptr + (1 << 40)])
    big = pb.TorchTensor(shape=[1 << 20], strides=[1], dtype="float32")
    with pytest.raises(CUDARuntimeError, match="cudaErrorInvalidValue"):  # past its end
        call(_raw_op("neg.default", [big], [big]), [ptr, ptr])
    with pytest.raises(ValueError, match="not the"):  # an output smaller than the result
        call(
            _raw_op(
                "neg.default", [spec], [pb.TorchTensor(shape=[1], strides=[1], dtype="float32")]
            ),
            [ptr, ptr],
        )
    with pytest.raises(TypeError, match="dtype"):
        call(
            _raw_op(
                "neg.default", [pb.TorchTensor(shape=[4], strides=[1], dtype="object")], [spec]
            ),
            [ptr, ptr],
        )
    with pytest.raises(CUDARuntimeError, match="cudaErrorInvalidValue"):  # too few addresses
        call(_raw_op("neg.default", [spec], [spec]), [ptr])
    assert (a + 1).sum().item() == 8  # the session goes on


def _losses(output: str) -> list[float]:
    return [float(line.split()[-1]) for line in output.splitlines() if "loss" in line]


def _run_example(
    example: str,
    argv: list[str],
    capsys: pytest.CaptureFixture[str],
    trips: list[int] | None = None,
) -> list[float]:
    """An example's losses, run in this process (its main() with ``argv``); ``trips`` gets
    the count of round trips made so far at each line it prints."""
    path = EXAMPLES / "torch" / example
    spec = importlib.util.spec_from_file_location(f"example_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if trips is not None:

        def counted(*args: object, **kwargs: object) -> None:
            trips.append(gpupool.stats().round_trips)
            print(*args, **kwargs)

        module.print = counted
    capsys.readouterr()
    with mock.patch.object(sys, "argv", [str(path), *argv]):
        module.main()
    return _losses(capsys.readouterr().out)


@pytest.mark.parametrize("example", ["cnn.py", "transformer.py"])
def test_examples_match_the_cpu_with_cuda_read_as_gpupool(
    pool: Daemon, example: str, capsys: pytest.CaptureFixture[str]
) -> None:
    on_cpu = _run_example(example, ["--steps", "3", "--cpu"], capsys)
    trips: list[int] = []
    with cuda_as_pool():
        assert torch.cuda.is_available()
        through_pool = _run_example(example, ["--steps", "3"], capsys, trips)
    assert not torch.cuda.is_available()  # the CPU build's own, back
    assert len(on_cpu) == 3
    assert through_pool == pytest.approx(on_cpu, rel=1e-4, abs=1e-5)
    # once the first steps have made their plans and filled the memory pool, a step whose
    # loss is read makes one round trip (reading it)
    assert trips[-1] - trips[-2] == 1


def test_an_example_runs_unchanged_through_gpupool_run_torch(
    pool: Daemon, capsys: pytest.CaptureFixture[str]
) -> None:
    on_cpu = _run_example("mlp.py", ["--steps", "3", "--cpu"], capsys)
    done = subprocess.run(
        [
            *GPUPOOL,
            "run",
            "--torch",
            "--daemons",
            pool.address,
            "--",
            sys.executable,
            str(EXAMPLES / "torch" / "mlp.py"),
            "--steps",
            "3",
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert _losses(done.stdout) == pytest.approx(on_cpu, rel=1e-4, abs=1e-5)


CUDA_PROGRAM = """
import torch
assert torch.cuda.is_available() and torch.cuda.device_count() == 2
x = torch.randn(4, 4).cuda()
w = torch.ones(4, device=torch.device("cuda"), requires_grad=True)
(x @ w).sum().backward()
torch.cuda.synchronize()
with torch.cuda.device(1):
    y = x.cuda() * 2
torch.cuda.set_device(1)
z = torch.zeros(2, device="cuda").to("cuda:0")
print(x.device, w.grad.device, y.device, z.device, torch.cuda.current_device())
print(torch.allclose(w.grad.cpu(), x.cpu().sum(0)), torch.equal(y.cpu(), x.cpu() * 2))
"""


def test_a_cuda_program_runs_on_the_pool(pool: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    """The CUDA calls of a program, read as gpupool (in this process: the start-up hook that
    installs the same mapping is checked by the example run through ``gpupool run``)."""
    capsys.readouterr()
    try:
        with cuda_as_pool():
            exec(CUDA_PROGRAM, {})
    finally:
        gt.set_device(0)
    printed = capsys.readouterr().out.split()
    assert printed == "gpupool:0 gpupool:0 gpupool:1 gpupool:0 1 True True".split()


IDIOMS = """
import numpy as np
import torch
import torch.nn.functional as F
torch.backends.cudnn.benchmark = True
dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
a = torch.tensor([1.0, 2.0, 3.0], device="cuda")
b = torch.from_numpy(np.arange(3, dtype=np.float32)).cuda()
print((a + b).tolist(), torch.zeros_like(a).device, a.new_zeros(2).device)
c = b.to(dev, torch.float64)
print(c.dtype, c.device)
m = torch.nn.Linear(3, 4).cuda()
logits = m(torch.randn(5, 3, device=dev))
y = torch.tensor([0, 1, 2, 3, 0]).to(dev)
print(0 <= (logits.argmax(dim=1) == y).float().mean().item() <= 1, F.one_hot(y, 4).sum().item())
with torch.no_grad():
    print(tuple(m(a.unsqueeze(0)).shape))
print(a[torch.tensor([2, 0], device=dev)].tolist(), a[1:].sum().item(), float(a.max()), int(y[1]))
scaler = torch.amp.GradScaler("cuda", enabled=False)
scaler.scale(logits.sum()).backward()
scaler.step(torch.optim.SGD(m.parameters(), 0.1))
print(format(a.sum(), ".1f"), a)
"""


def test_common_cuda_idioms_run_on_the_pool(
    pool: Daemon, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    with cuda_as_pool():
        exec(IDIOMS, {})
    assert capsys.readouterr().out.splitlines() == [
        "[1.0, 3.0, 5.0] gpupool:0 gpupool:0",
        "torch.float64 gpupool:0",
        "True 5",
        "(1, 4)",
        "[3.0, 1.0] 5.0 3.0 1",
        "6.0 tensor([1., 2., 3.], device='gpupool:0')",
    ]


WORKER_IMPORTS_TORCH_LATE = """
import sys
from gpupool.proto import batch, gpupool_pb2 as pb
from gpupool.server.backends.emu import EmuBackend, MemoryLedger
from gpupool.server.executor import SessionExecutor

executor = SessionExecutor(EmuBackend(0, MemoryLedger.create(1 << 24, 2), 0), lambda e: e)
def call(**fields):
    return list(executor.handle(pb.Request(wait=True, **fields)))
ptr = call(malloc=pb.Malloc(size=64))[0].ptr
call(memset=pb.Memset(ptr=ptr, value=0, size=64))
print("torch" in sys.modules)
spec = pb.TorchTensor(shape=[4], strides=[1], dtype="float32")
config = pb.TorchOpConfig(op="add.Scalar", args=[pb.TorchValue(tensor=spec),
                          pb.TorchValue(integer=3)], out=[spec])
pointers = (ptr).to_bytes(8, "little") + (ptr + 16).to_bytes(8, "little")
replies = call(torch_op=pb.TorchOp(config=config.SerializeToString(), pointers=pointers))
print(replies[0].HasField("error"), "torch" in sys.modules)
data = call(memcpy_dtoh=pb.MemcpyDtoH(src=ptr + 16, size=16))[0]
print(list(memoryview(data.source.direct(0, 16)).cast("f")))
"""


def test_a_worker_imports_torch_only_when_a_torch_op_arrives() -> None:
    done = subprocess.run(
        [sys.executable, "-c", WORKER_IMPORTS_TORCH_LATE],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split("\n")[:3] == ["False", "False True", "[3.0, 3.0, 3.0, 3.0]"]
