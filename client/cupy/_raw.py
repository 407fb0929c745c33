"""``RawKernel`` and ``RawModule``: CUDA C written by the user, compiled on the daemon.

As in CuPy, the source is compiled on first use (or by ``compile()``), once per connection for the
same source and options, and loaded on every device that launches it. A launch goes to the
current stream and is queued: it travels with the next synchronizing call.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gpupool.client import runtime
from gpupool.client.module import Function, Module
from gpupool.cupy._kernel_params import COMPILED
from gpupool.cupy.cuda.stream import get_current_stream

Dims = int | Sequence[int]


def _check_backend(backend: str, **unsupported: bool) -> None:
    if backend not in ("nvrtc", "nvcc"):
        raise ValueError(f"Invalid backend {backend}")
    for name, value in unsupported.items():
        if value:
            raise NotImplementedError(f"{name}=True is not supported remotely (docs/cupy.md)")


class RawKernel:
    """One ``extern "C"`` kernel of a CUDA C source, as ``cupy.RawKernel``."""

    def __init__(
        self,
        code: str,
        name: str,
        options: Sequence[str] = (),
        backend: str = "nvrtc",
        translate_cucomplex: bool = False,
        enable_cooperative_groups: bool = False,
        jitify: bool = False,
    ) -> None:
        _check_backend(
            backend,
            translate_cucomplex=translate_cucomplex,
            enable_cooperative_groups=enable_cooperative_groups,
            jitify=jitify,
        )
        self.code = code
        self.name = name
        self.options = tuple(options)
        self.backend = backend

    @property
    def kernel(self) -> Function:
        """The compiled kernel (compiling the source on first use: CompileException if it fails)."""
        return COMPILED.function(self.code, self.name, self.options)

    def compile(self, log_stream: Any = None) -> None:
        """Compile now rather than at the first launch."""
        self.kernel  # noqa: B018 (compiles and loads)

    def __call__(
        self, grid: Dims, block: Dims, args: Sequence[Any], *, shared_mem: int = 0
    ) -> None:
        """Queue ``kernel<<<grid, block, shared_mem, current stream>>>(*args)``."""
        if not isinstance(args, (tuple, list)):
            raise TypeError(f"args must be a tuple or a list, not {type(args).__name__}")
        self.kernel(grid, block, args, shared_mem=shared_mem, stream=get_current_stream().ptr)

    @property
    def max_threads_per_block(self) -> int:
        return int(runtime.getDeviceProperties(runtime.getDevice())["maxThreadsPerBlock"])

    @property
    def attributes(self) -> dict[str, int]:
        """The attributes a remote device reports (CuPy's keys)."""
        return {"max_threads_per_block": self.max_threads_per_block}


class RawModule:
    """A CUDA C source with several kernels, as ``cupy.RawModule``."""

    def __init__(
        self,
        code: str | None = None,
        *,
        path: str | None = None,
        options: Sequence[str] = (),
        backend: str = "nvrtc",
        translate_cucomplex: bool = False,
        enable_cooperative_groups: bool = False,
        name_expressions: Sequence[str] | None = None,
        jitify: bool = False,
    ) -> None:
        _check_backend(
            backend,
            translate_cucomplex=translate_cucomplex,
            enable_cooperative_groups=enable_cooperative_groups,
            jitify=jitify,
        )
        if name_expressions:
            raise NotImplementedError(
                "RawModule(name_expressions=...): template kernels are not supported remotely;"
                ' instantiate them in extern "C" kernels (docs/cupy.md)'
            )
        if (code is None) == (path is None):
            raise TypeError("Exactly one of `code` and `path` keyword arguments must be given.")
        if path is not None:
            if path.endswith((".cubin", ".ptx")):
                raise NotImplementedError(
                    "RawModule(path=...) of a cubin or PTX file: use gpupool.Module.from_cubin/"
                    "from_ptx (docs/cupy.md)"
                )
            with open(path) as source:
                code = source.read()
        assert code is not None
        self.code = code
        self.options = tuple(options)
        self.backend = backend

    @property
    def module(self) -> Module:
        return COMPILED.module(self.code, self.options)

    def compile(self, log_stream: Any = None) -> None:
        self.module  # noqa: B018 (compiles and loads)

    def get_function(self, name: str) -> RawKernel:
        """The kernel ``name``; cudaErrorSymbolNotFound when the module has none of that name."""
        kernel = RawKernel(self.code, name, self.options, self.backend)
        kernel.compile()
        return kernel
