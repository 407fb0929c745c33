"""``ElementwiseKernel``: CuPy's user-defined elementwise kernels, compiled on the daemon.

The CUDA C is generated here, as CuPy generates it: a grid-stride loop over the broadcast
shape in which each non-raw array parameter is a reference to its element (found through its
byte strides), ``raw`` parameters are whole arrays indexed by the loop index ``i``, and
``_ind.size()`` is the loop's size. The module is loaded with the runtime's ``ModuleLoad`` and
cached per dtype signature (and device); a call is one queued launch, no round trip.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gpupool.cupy import _kernel_params as kp
from gpupool.cupy._ndarray import ndarray

_MAX_GRID = (1 << 31) - 1


class ElementwiseKernel(kp.UserKernel):
    """A user-defined elementwise kernel, as ``cupy.ElementwiseKernel``."""

    def __init__(
        self,
        in_params: str,
        out_params: str,
        operation: str,
        name: str = "kernel",
        reduce_dims: bool = True,
        preamble: str = "",
        no_return: bool = False,
        return_tuple: bool = False,
        loop_prep: str = "",
        after_loop: str = "",
        options: tuple[str, ...] = (),
    ) -> None:
        super().__init__(in_params, out_params, name)
        if "i" in (p.name for p in self.params):
            raise ValueError("Can not use 'i' as a parameter name")
        self.operation = operation
        self.reduce_dims = reduce_dims
        self.preamble = preamble
        self.no_return = no_return
        self.return_tuple = return_tuple
        self.loop_prep = loop_prep
        self.after_loop = after_loop
        self.options = tuple(options)

    def __call__(
        self,
        *args: Any,
        size: int | None = None,
        stream: Any = None,
        block_size: int = 128,
    ) -> Any:
        """Broadcast the arguments, allocate missing outputs, and queue the kernel."""
        if block_size <= 0:
            raise ValueError("block_size must be greater than zero")
        in_args, out_args = self.split_arguments(args)
        kp.check_device(args)
        for param, out in zip(self.out_params, out_args, strict=False):
            if not isinstance(out, ndarray):
                raise TypeError(f"Output arguments must be cupy.ndarray ({param.name})")
        shape = self._loop_shape(args, size)
        in_types, out_types, placeholders = kp.decide_types(
            self.in_params,
            self.out_params,
            [a.dtype if isinstance(a, ndarray) else None for a in in_args],
            [a.dtype for a in out_args],
        )
        if not out_args:
            for param in self.out_params:
                if param.raw and size is None:
                    raise ValueError("Output array size is Undecided")
            out_args = [ndarray(shape, dtype) for dtype in out_types]
        else:
            for param, out in zip(self.out_params, out_args, strict=True):
                if not param.raw and out.shape != shape:
                    raise ValueError("Out shape is mismatched")
        if self.no_return:
            result = None
        elif self.nout == 1 and not self.return_tuple:
            result = out_args[0]
        else:
            result = tuple(out_args)
        if kp.size_of(shape):
            in_args = [
                kp.as_scalar(a, t) if kp.is_scalar(a) else a
                for a, t in zip(in_args, in_types, strict=True)
            ]
            self._launch([*in_args, *out_args], shape, placeholders, stream, block_size)
        return result

    def _loop_shape(self, args: tuple[Any, ...], size: int | None) -> tuple[int, ...]:
        params = zip(args, self.params, strict=False)
        arrays = [a for a, p in params if isinstance(a, ndarray) and not p.raw]
        if size is not None:
            if arrays:
                raise ValueError(
                    "Specified 'size' can be used only if all of the ndarray are 'raw'."
                )
            return (int(size),)
        if not arrays:
            raise ValueError("Loop size is undecided.")
        try:
            return tuple(np.broadcast_shapes(*(a.shape for a in arrays)))
        except ValueError as exc:
            shapes = " ".join(str(a.shape) for a in arrays)
            raise ValueError(
                f"operands could not be broadcast together with shapes {shapes}"
            ) from exc

    def _launch(
        self,
        args: list[Any],
        shape: tuple[int, ...],
        placeholders: dict[str, np.dtype],
        stream: Any,
        block_size: int,
    ) -> None:
        looped = [
            i
            for i, (a, p) in enumerate(zip(args, self.params, strict=True))
            if isinstance(a, ndarray) and not p.raw
        ]
        strides = [kp.broadcast_strides(args[i], shape) for i in looped]
        if self.reduce_dims:
            shape, strides = kp.collapse(shape, strides)
        elif not shape:
            shape, strides = (1,), [(0,) for _ in looped]
        loop_strides = dict(zip(looped, strides, strict=True))
        signature, wire = [], []
        for index, arg in enumerate(args):
            if index in loop_strides:
                signature.append(("loop", arg.dtype, len(shape)))
                wire += [arg, *kp.int64s(loop_strides[index])]
            elif isinstance(arg, ndarray):
                own_shape = arg.shape or (1,)
                own_strides = arg.strides or (0,)
                signature.append(("raw", arg.dtype, len(own_shape)))
                wire += [arg, np.int64(arg.size), *kp.int64s(own_shape), *kp.int64s(own_strides)]
            else:
                signature.append(("scalar", arg.dtype, 0))
                wire.append(arg)
        total = kp.size_of(shape)
        wire += [np.int64(total), *kp.int64s(shape)]
        key = (tuple(signature), len(shape), tuple(sorted(placeholders.items())))
        source = self.source_for(key, lambda: self._source(signature, len(shape), placeholders))
        function = kp.COMPILED.function(source, self.name, self.options)
        grid = min(kp.ceil_div(total, block_size), _MAX_GRID)
        kp.launch(function, grid, block_size, wire, stream)

    def _source(
        self,
        signature: list[tuple[str, np.dtype, int]],
        ndim: int,
        placeholders: dict[str, np.dtype],
    ) -> str:
        """The CUDA C of this kernel for one signature (kind, dtype, dimensions per argument)."""
        declared, setup, refs = [], [], []
        for param, (kind, _dtype, nd) in zip(self.params, signature, strict=True):
            n, t = param.name, param.ctype
            if kind == "scalar":
                declared.append(f"{t} {n}")
                continue
            declared.append(f"{t}* _gp_{n}_ptr")
            if kind == "loop":
                declared += [f"long long _gp_{n}_s{d}" for d in range(nd)]
                setup.append(f"gpupool_kernel::Array<{t}, {nd}> _raw_{n};")
                setup.append(f"_raw_{n}.data_ = _gp_{n}_ptr; _raw_{n}.size_ = _ind.size_;")
                setup += [
                    f"_raw_{n}.shape_[{d}] = _ind.shape_[{d}]; "
                    f"_raw_{n}.strides_[{d}] = _gp_{n}_s{d};"
                    for d in range(nd)
                ]
                const = "const " if param.is_const else ""
                refs.append(f"{const}{t} &{n} = _raw_{n}[_ind.get()];")
            else:
                declared.append(f"long long _gp_{n}_size")
                declared += [f"long long _gp_{n}_n{d}" for d in range(nd)]
                declared += [f"long long _gp_{n}_s{d}" for d in range(nd)]
                setup.append(f"gpupool_kernel::Array<{t}, {nd}> {n};")
                setup.append(f"{n}.data_ = _gp_{n}_ptr; {n}.size_ = _gp_{n}_size;")
                setup += [
                    f"{n}.shape_[{d}] = _gp_{n}_n{d}; {n}.strides_[{d}] = _gp_{n}_s{d};"
                    for d in range(nd)
                ]
        declared.append("long long _gp_size")
        declared += [f"long long _gp_n{d}" for d in range(ndim)]
        indexer = [f"gpupool_kernel::Indexer<{ndim}> _ind; _ind.size_ = _gp_size;"]
        indexer += [f"_ind.shape_[{d}] = _gp_n{d};" for d in range(ndim)]
        body = "\n  ".join([*indexer, *setup])
        refs_code = "\n    ".join(refs)
        dtypes = [d for _k, d, _n in signature] + list(placeholders.values())
        return (
            f"{kp.prelude(dtypes)}{kp.typedefs(placeholders)}{self.preamble}\n"
            f'extern "C" __global__ void {self.name}({", ".join(declared)}) {{\n'
            f"  {body}\n"
            f"  {self.loop_prep};\n"
            "  for (ptrdiff_t i = static_cast<ptrdiff_t>(blockIdx.x) * blockDim.x + threadIdx.x;\n"
            "       i < _ind.size(); i += static_cast<ptrdiff_t>(blockDim.x) * gridDim.x) {\n"
            "    _ind.set(i);\n"
            f"    {refs_code}\n"
            f"    {self.operation};\n"
            "  }\n"
            f"  {self.after_loop};\n"
            "}\n"
        )
