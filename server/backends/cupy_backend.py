"""The GPU backend: CuPy's bindings of the CUDA runtime, driver and NVRTC.

Imported only inside worker processes (and the device probe), never in the daemon's front
process, so the front never holds a CUDA context (design.md, process model). Memory comes
straight from cudaMalloc, not from CuPy's pool, so that ``memGetInfo`` and the daemon's
accounting see a free at once.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict
from types import ModuleType
from typing import Any

import cupy
import numpy as np
from cupy.cuda import runtime
from cupy_backends.cuda.api.driver import CUDADriverError
from cupy_backends.cuda.api.runtime import CUDARuntimeError as CupyRuntimeError

from gpupool.errors import CompileError, CUDARuntimeError
from gpupool.server.backends.base import Backend, DeviceInfo, Dim

_HOST_REGISTER_PORTABLE = 1  # cudaHostRegisterPortable
# A CUDA context with CuPy loaded, where NVML cannot say (about 0.5 GiB on an H100, CUDA 13).
CONTEXT_ESTIMATE = 512 << 20

# Driver error names whose runtime name is not their CamelCase spelling.
_DRIVER_TO_RUNTIME = {
    "CUDA_ERROR_NOT_FOUND": "cudaErrorSymbolNotFound",
    "CUDA_ERROR_LAUNCH_FAILED": "cudaErrorLaunchFailure",
    "CUDA_ERROR_INVALID_HANDLE": "cudaErrorInvalidResourceHandle",
    "CUDA_ERROR_INVALID_IMAGE": "cudaErrorInvalidKernelImage",
    "CUDA_ERROR_OUT_OF_MEMORY": "cudaErrorMemoryAllocation",
    "CUDA_ERROR_NO_BINARY_FOR_GPU": "cudaErrorNoKernelImageForDevice",
}


def runtime_name(driver_name: str) -> str:
    """The CUDA runtime's name for a driver error name (``CUDA_ERROR_ILLEGAL_ADDRESS``)."""
    if driver_name in _DRIVER_TO_RUNTIME:
        return _DRIVER_TO_RUNTIME[driver_name]
    words = driver_name.removeprefix("CUDA_ERROR_").split("_")
    return "cudaError" + "".join(word.capitalize() for word in words)


def translate(exc: Exception) -> Exception:
    """gpupool's error for an error CuPy raised; other errors as they are."""
    if not isinstance(exc, CupyRuntimeError | CUDADriverError):
        return exc
    name, _, detail = str(exc).partition(":")
    if isinstance(exc, CUDADriverError):
        name = runtime_name(name.strip())
    return CUDARuntimeError(name.strip(), detail.strip())


class CupyBackend(Backend):
    """One GPU, for the session of one worker."""

    def __init__(self, index: int) -> None:
        self._device = cupy.cuda.Device(index)
        self._device.use()
        runtime.free(0)  # create the context now, while the worker is warming up

    def properties(self) -> DeviceInfo:
        return device_info(self._device.id)

    def mem_info(self) -> tuple[int, int]:
        free, total = runtime.memGetInfo()
        return int(free), int(total)

    def malloc(self, size: int) -> int:
        return int(runtime.malloc(size))

    def own_memory(self) -> int:
        return int(cupy.get_default_memory_pool().total_bytes()) + _torch_reserved()

    def limit_own_memory(self, limit: int) -> None:
        # CuPy-side temporaries of array operations come from CuPy's pool in this worker
        cupy.get_default_memory_pool().set_limit(size=max(limit, 1))  # 0 would mean none
        torch = _torch_on_gpu()
        if torch is not None:  # and the ATen operators' from PyTorch's caching allocator
            total = runtime.memGetInfo()[1]
            torch.cuda.set_per_process_memory_fraction(min(1.0, max(limit, 1) / total))

    def context_memory(self) -> int:
        # NVML knows what this process holds on the device; less what it allocated itself.
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByPciBusId(
                runtime.deviceGetPCIBusId(self._device.id)
            )
            processes = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
        except Exception:  # no NVML (not installed, no permission): the usual size
            return CONTEXT_ESTIMATE
        used = next((p.usedGpuMemory for p in processes if p.pid == os.getpid()), None)
        if not used:  # not listed (another PID namespace) or not reported
            return CONTEXT_ESTIMATE
        return max(0, int(used) - self.own_memory())  # asked before the session allocates

    def free(self, ptr: int) -> None:
        runtime.free(ptr)

    def export_memory(self, base: int, size: int) -> tuple[bytes, int | None] | None:
        # CUDA IPC: a worker of the same host opens the allocation and copies device to
        # device (over NVLink or PCIe peer access where the GPUs have it)
        return bytes(runtime.ipcGetMemHandle(base)), None

    def open_peer_memory(self, handle: bytes, fd: int | None, size: int) -> int:
        if fd is not None:
            os.close(fd)
        return int(runtime.ipcOpenMemHandle(handle))

    def close_peer_memory(self, ptr: int) -> None:
        runtime.ipcCloseMemHandle(ptr)

    def write(self, ptr: int, data: memoryview, stream: object) -> None:
        host = np.frombuffer(data, np.uint8)
        runtime.memcpyAsync(
            ptr, host.ctypes.data, host.nbytes, runtime.memcpyHostToDevice, _ptr(stream)
        )
        _stream(stream).synchronize()  # the host bytes are freed when this returns

    def read(self, ptr: int, size: int, stream: object) -> memoryview:
        host = np.empty(size, np.uint8)
        runtime.memcpyAsync(host.ctypes.data, ptr, size, runtime.memcpyDeviceToHost, _ptr(stream))
        _stream(stream).synchronize()
        return memoryview(host.data)

    def read_into(self, ptr: int, target: memoryview, stream: object) -> None:
        host = np.frombuffer(target, np.uint8)
        runtime.memcpyAsync(
            host.ctypes.data, ptr, host.nbytes, runtime.memcpyDeviceToHost, _ptr(stream)
        )
        _stream(stream).synchronize()

    def staging(self, size: int) -> memoryview:
        # Pinned: a copy from it runs at the link's DMA speed, not through a bounce buffer.
        pinned = cupy.cuda.alloc_pinned_memory(size)
        staged: memoryview = np.frombuffer(pinned, np.uint8, size).data
        return staged

    def register_host(self, buffer: memoryview) -> None:
        # cudaHostRegister pins a shared-memory ring in place, so copies from and to it run
        # at pinned speed although the client wrote it with a plain memcpy.
        host = np.frombuffer(buffer, np.uint8)
        runtime.hostRegister(host.ctypes.data, host.nbytes, _HOST_REGISTER_PORTABLE)

    def unregister_host(self, buffer: memoryview) -> None:
        runtime.hostUnregister(np.frombuffer(buffer, np.uint8).ctypes.data)

    def copy(self, dst: int, src: int, size: int, stream: object) -> None:
        runtime.memcpyAsync(dst, src, size, runtime.memcpyDeviceToDevice, _ptr(stream))

    def memset(self, ptr: int, value: int, size: int, stream: object) -> None:
        runtime.memsetAsync(ptr, value, size, _ptr(stream))

    def load_module(self, kind: str, image: str | bytes, options: Sequence[str]) -> object:
        # CuPy caches compiled modules for the life of the process, so unloading one frees
        # nothing until the worker ends; a worker serves one session, so that is soon.
        if kind == "cuda_source":
            module = cupy.RawModule(code=image, options=tuple(options))
            try:
                module.compile()
            except cupy.cuda.compiler.CompileException as exc:
                raise CompileError("CUDA source did not compile", log=str(exc)) from exc
            return module
        loaded = cupy.cuda.function.Module()
        loaded.load(image.encode() if isinstance(image, str) else image)
        return loaded

    def get_function(self, module: object, name: str) -> object:
        assert isinstance(module, cupy.RawModule | cupy.cuda.function.Module)
        return module.get_function(name)

    def launch(
        self,
        function: object,
        grid: Dim,
        block: Dim,
        shared_mem: int,
        stream: object,
        args: Sequence[np.generic],
    ) -> None:
        assert isinstance(function, cupy.RawKernel | cupy.cuda.function.Function)
        with _stream(stream):
            function(grid, block, tuple(args), shared_mem=shared_mem)

    def create_stream(self) -> object:
        return cupy.cuda.Stream(non_blocking=False)

    def destroy_stream(self, stream: object) -> None:
        pass  # CuPy destroys the stream when the last reference goes

    def synchronize_stream(self, stream: object) -> None:
        _stream(stream).synchronize()

    def stream_wait_event(self, stream: object, event: object) -> None:
        _stream(stream).wait_event(event)

    def create_event(self, disable_timing: bool) -> object:
        return cupy.cuda.Event(disable_timing=disable_timing)

    def record_event(self, event: object, stream: object) -> None:
        assert isinstance(event, cupy.cuda.Event)
        event.record(_stream(stream))

    def query_event(self, event: object) -> bool:
        assert isinstance(event, cupy.cuda.Event)
        return bool(event.done)

    def synchronize_event(self, event: object) -> None:
        assert isinstance(event, cupy.cuda.Event)
        event.synchronize()

    def elapsed_ms(self, start: object, end: object) -> float:
        return float(cupy.cuda.get_elapsed_time(start, end))

    def synchronize(self) -> None:
        self._device.synchronize()

    def array_module(self) -> ModuleType:
        return cupy

    def view(
        self,
        base: int,
        size: int,
        offset: int,
        shape: tuple[int, ...],
        strides: tuple[int, ...],
        dtype: np.dtype,
    ) -> cupy.ndarray:
        # The memory is the session's own cudaMalloc: CuPy must neither own nor free it.
        memory = cupy.cuda.UnownedMemory(base, size, None, self._device.id)
        pointer = cupy.cuda.MemoryPointer(memory, offset)
        return cupy.ndarray(shape, dtype, pointer, strides)

    def on_stream(self, stream: object) -> cupy.cuda.Stream:
        return _stream(stream)

    def random_generator(self, seed: int | None) -> cupy.random.Generator:
        return cupy.random.default_rng(seed)

    def random_state(self, seed: int | None) -> cupy.random.RandomState:
        return cupy.random.RandomState(seed)


def device_count() -> int:
    return int(runtime.getDeviceCount())


def device_info(index: int) -> DeviceInfo:
    props = runtime.getDeviceProperties(index)
    name = props["name"]
    return DeviceInfo(
        name=name.decode() if isinstance(name, bytes) else str(name),
        total_memory=int(props["totalGlobalMem"]),
        major=int(props["major"]),
        minor=int(props["minor"]),
        multiprocessor_count=int(props["multiProcessorCount"]),
        max_threads_per_block=int(props["maxThreadsPerBlock"]),
        warp_size=int(props["warpSize"]),
        shared_memory_per_block=int(props["sharedMemPerBlock"]),
        clock_rate_khz=int(props.get("clockRate", 0)),
        pci_bus_id=runtime.deviceGetPCIBusId(index),
        uuid=_uuid(props.get("uuid", b"")),
    )


def _uuid(raw: bytes) -> str:
    """nvidia-smi's spelling of a device UUID; empty when CuPy's bytes are not all there.

    CuPy copies the UUID as a C string, so a UUID holding a zero byte comes back short.
    """
    if not isinstance(raw, bytes) or len(raw) < 16:
        return ""
    text = raw[:16].hex()
    return f"GPU-{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def _torch_on_gpu() -> Any:
    """PyTorch, where a torch operation of this session has loaded it and its CUDA."""
    torch = sys.modules.get("torch")
    return torch if torch is not None and torch.cuda.is_initialized() else None


def _torch_reserved() -> int:
    """What PyTorch's caching allocator holds in this worker (its operators' results and
    temporaries before they are copied into the session's outputs)."""
    torch = _torch_on_gpu()
    return int(torch.cuda.memory_reserved()) if torch is not None else 0


def _stream(stream: object) -> cupy.cuda.Stream:
    return stream if isinstance(stream, cupy.cuda.Stream) else cupy.cuda.Stream.null


def _ptr(stream: object) -> int:
    return int(_stream(stream).ptr)


if __name__ == "__main__":  # the daemon's device probe: the GPUs as JSON on stdout
    json.dump([asdict(device_info(i)) for i in range(device_count())], sys.stdout)
