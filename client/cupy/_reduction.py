"""``ReductionKernel``: CuPy's user-defined reductions, compiled on the daemon.

The generated CUDA C gives each output element a block (blocks stride over the outputs):
every thread maps and reduces its share of the reduced elements, then the block combines the
threads' values in shared memory with ``__syncthreads`` between the halving steps, and thread
0 applies ``post_map_expr``. As in CuPy, ``reduce_expr`` sees ``a`` and ``b`` and
``post_map_expr`` sees ``a``, all of ``reduce_type`` (the first output's type by default).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.lib.array_utils import normalize_axis_tuple

from gpupool.cupy import _kernel_params as kp
from gpupool.cupy._infer import reduced_shape
from gpupool.cupy._ndarray import ndarray

_MAX_BLOCK = 256
_MAX_GRID = (1 << 31) - 1


def _block_size(reduce_size: int) -> int:
    """A power of two (the tree needs one) no larger than the work needs."""
    block = 1
    while block < min(reduce_size, _MAX_BLOCK):
        block *= 2
    return block


class ReductionKernel(kp.UserKernel):
    """A user-defined reduction kernel, as ``cupy.ReductionKernel``."""

    def __init__(
        self,
        in_params: str,
        out_params: str,
        map_expr: str,
        reduce_expr: str,
        post_map_expr: str,
        identity: str | None,
        name: str = "reduce_kernel",
        reduce_type: str | None = None,
        reduce_dims: bool = True,
        preamble: str = "",
        options: tuple[str, ...] = (),
    ) -> None:
        super().__init__(in_params, out_params, name)
        if any(p.raw for p in self.params):
            raise NotImplementedError(
                "ReductionKernel with raw parameters is not supported (docs/cupy.md)"
            )
        if not self.out_params:
            raise ValueError("ReductionKernel needs an output parameter")
        self.map_expr = map_expr
        self.reduce_expr = reduce_expr
        self.post_map_expr = post_map_expr
        self.identity = identity
        self.reduce_type = reduce_type or self.out_params[0].ctype
        self.reduce_dims = reduce_dims  # accepted for CuPy's signature; outputs index as given
        self.preamble = preamble
        self.options = tuple(options)

    def __call__(
        self,
        *args: Any,
        out: ndarray | None = None,
        axis: int | Sequence[int] | None = None,
        keepdims: bool = False,
        stream: Any = None,
    ) -> Any:
        """Reduce the broadcast inputs over ``axis`` (all axes by default)."""
        in_args, out_args = self.split_arguments(args)
        if out is not None:
            if out_args:
                raise ValueError("cannot specify 'out' as both a positional and keyword argument")
            out_args = [out]
        if any(not isinstance(o, ndarray) for o in out_args):
            raise TypeError("Output arguments must be cupy.ndarray")
        kp.check_device([*in_args, *out_args])
        arrays = [a for a in in_args if isinstance(a, ndarray)]
        if not arrays:
            raise ValueError("ReductionKernel needs at least one array input")
        shape = tuple(np.broadcast_shapes(*(a.shape for a in arrays)))
        every = range(len(shape))
        axes = tuple(sorted(every if axis is None else normalize_axis_tuple(axis, len(shape))))
        kept = [ax for ax in every if ax not in axes]
        out_shape = reduced_shape(shape, axis, keepdims)
        in_types, out_types, placeholders = kp.decide_types(
            self.in_params,
            self.out_params,
            [a.dtype if isinstance(a, ndarray) else None for a in in_args],
            [a.dtype for a in out_args],
        )
        if out_args:
            if len(out_args) != self.nout:
                raise TypeError(f"{self.name} takes {self.nout} outputs, got {len(out_args)}")
            for o in out_args:
                if o.shape != out_shape:
                    raise ValueError("Out shape is mismatched")
        else:
            out_args = [ndarray(out_shape, dtype) for dtype in out_types]
        reduce_size = kp.size_of([shape[ax] for ax in axes])
        if reduce_size == 0 and not self.identity:
            raise ValueError(
                f"zero-size array to reduction operation {self.name} which has no identity"
            )
        if not self.identity:
            raise NotImplementedError(
                "ReductionKernel without an identity is not supported (docs/cupy.md)"
            )
        in_args = [
            kp.as_scalar(a, t) if kp.is_scalar(a) else a
            for a, t in zip(in_args, in_types, strict=True)
        ]
        if kp.size_of(out_shape):
            self._launch(in_args, out_args, shape, axes, kept, placeholders, stream)
        return out_args[0] if self.nout == 1 else tuple(out_args)

    def _launch(
        self,
        in_args: list[Any],
        out_args: list[ndarray],
        shape: tuple[int, ...],
        axes: tuple[int, ...],
        kept: list[int],
        placeholders: dict[str, np.dtype],
        stream: Any,
    ) -> None:
        out_dims = [shape[ax] for ax in kept] or [1]
        red_dims = [shape[ax] for ax in axes] or [1]
        signature, wire = [], []
        for arg in in_args:
            if isinstance(arg, ndarray):
                strides = kp.broadcast_strides(arg, shape)
                out_strides = [strides[ax] for ax in kept] or [0]
                red_strides = [strides[ax] for ax in axes] or [0]
                signature.append(("array", arg.dtype))
                wire += [arg, *kp.int64s(out_strides), *kp.int64s(red_strides)]
            else:
                signature.append(("scalar", arg.dtype))
                wire.append(arg)
        for out in out_args:
            # Without keepdims the output's axes are the kept ones; with it, pick them out.
            keeps_dims = out.ndim == len(shape)
            steps = [out.strides[ax] for ax in kept] if keeps_dims else list(out.strides)
            signature.append(("array", out.dtype))
            wire += [out, *kp.int64s(steps or [0])]
        out_size, reduce_size = kp.size_of(out_dims), kp.size_of(red_dims)
        wire += [np.int64(out_size), *kp.int64s(out_dims)]
        wire += [np.int64(reduce_size), *kp.int64s(red_dims)]
        key = (tuple(signature), len(out_dims), len(red_dims), tuple(sorted(placeholders.items())))
        source = self.source_for(
            key, lambda: self._source(signature, len(out_dims), len(red_dims), placeholders)
        )
        function = kp.COMPILED.function(source, self.name, self.options)
        block = _block_size(reduce_size)
        reduce_itemsize = self._reduce_itemsize(placeholders)
        grid = min(out_size, _MAX_GRID)
        kp.launch(function, grid, block, wire, stream, shared_mem=block * reduce_itemsize)

    def _reduce_itemsize(self, placeholders: dict[str, np.dtype]) -> int:
        if self.reduce_type in placeholders:
            return placeholders[self.reduce_type].itemsize
        for dtype, name in kp._C_TYPES.items():
            if name == self.reduce_type:
                return dtype.itemsize
        return 16  # a user type named in the preamble: room for the largest scalar

    def _source(
        self,
        signature: list[tuple[str, np.dtype]],
        n_out: int,
        n_red: int,
        placeholders: dict[str, np.dtype],
    ) -> str:
        declared, reads, writes = [], [], []
        for index, (param, (kind, _dtype)) in enumerate(zip(self.params, signature, strict=True)):
            n, t = param.name, param.ctype
            if kind == "scalar":
                declared.append(f"{t} {n}")
                continue
            declared.append(f"{t}* _gp_{n}_ptr")
            declared += [f"long long _gp_{n}_o{d}" for d in range(n_out)]
            out_offset = " + ".join(f"_gp_out.index_[{d}] * _gp_{n}_o{d}" for d in range(n_out))
            if index < self.nin:
                declared += [f"long long _gp_{n}_r{d}" for d in range(n_red)]
                red_offset = " + ".join(f"_gp_red.index_[{d}] * _gp_{n}_r{d}" for d in range(n_red))
                reads.append(
                    f"const {t} &{n} = *reinterpret_cast<const {t}*>("
                    f"reinterpret_cast<const char*>(_gp_{n}_ptr) + {out_offset} + {red_offset});"
                )
            else:
                writes.append(
                    f"{t} &{n} = *reinterpret_cast<{t}*>("
                    f"reinterpret_cast<char*>(_gp_{n}_ptr) + {out_offset});"
                )
        declared.append("long long _gp_out_size")
        declared += [f"long long _gp_out_n{d}" for d in range(n_out)]
        declared.append("long long _gp_red_size")
        declared += [f"long long _gp_red_n{d}" for d in range(n_red)]
        setup = [
            f"gpupool_kernel::Indexer<{n_out}> _gp_out; _gp_out.size_ = _gp_out_size;",
            *(f"_gp_out.shape_[{d}] = _gp_out_n{d};" for d in range(n_out)),
            f"gpupool_kernel::Indexer<{n_red}> _gp_red; _gp_red.size_ = _gp_red_size;",
            *(f"_gp_red.shape_[{d}] = _gp_red_n{d};" for d in range(n_red)),
            # CuPy's names for the input's and the output's sizes (its mean divides by them)
            "gpupool_kernel::Indexer<1> _in_ind; _in_ind.size_ = _gp_out_size * _gp_red_size;",
            "gpupool_kernel::Indexer<1> _out_ind; _out_ind.size_ = _gp_out_size;",
        ]
        dtypes = [d for _k, d in signature] + list(placeholders.values())
        nl = "\n      "
        return (
            f"{kp.prelude(dtypes)}{kp.typedefs(placeholders)}"
            f"typedef {self.reduce_type} _type_reduce;\n"
            f"{self.preamble}\n"
            f"#define REDUCE(a, b) ({self.reduce_expr})\n"
            f"#define POST_MAP(a) ({self.post_map_expr})\n"
            f'extern "C" __global__ void {self.name}({", ".join(declared)}) {{\n'
            "  extern __shared__ unsigned char _gp_shared[];\n"
            "  _type_reduce* _gp_partial = reinterpret_cast<_type_reduce*>(_gp_shared);\n"
            f"  {' '.join(setup)}\n"
            "  for (ptrdiff_t _gp_o = blockIdx.x; _gp_o < _gp_out.size(); _gp_o += gridDim.x) {\n"
            "    _gp_out.set(_gp_o);\n"
            f"    _type_reduce _gp_acc = _type_reduce({self.identity});\n"
            "    for (ptrdiff_t _gp_r = threadIdx.x; _gp_r < _gp_red.size();"
            " _gp_r += blockDim.x) {\n"
            "      _gp_red.set(_gp_r);\n"
            f"      {nl.join(reads)}\n"
            f"      _type_reduce _gp_mapped = static_cast<_type_reduce>({self.map_expr});\n"
            "      _gp_acc = REDUCE(_gp_acc, _gp_mapped);\n"
            "    }\n"
            "    _gp_partial[threadIdx.x] = _gp_acc;\n"
            "    __syncthreads();\n"
            "    for (unsigned int _gp_s = blockDim.x / 2; _gp_s > 0; _gp_s >>= 1) {\n"
            "      if (threadIdx.x < _gp_s) {\n"
            "        _type_reduce _gp_a = _gp_partial[threadIdx.x];\n"
            "        _type_reduce _gp_b = _gp_partial[threadIdx.x + _gp_s];\n"
            "        _gp_partial[threadIdx.x] = REDUCE(_gp_a, _gp_b);\n"
            "      }\n"
            "      __syncthreads();\n"
            "    }\n"
            "    if (threadIdx.x == 0) {\n"
            f"      {nl.join(writes)}\n"
            "      POST_MAP(_gp_partial[0]);\n"
            "    }\n"
            "    __syncthreads();\n"
            "  }\n"
            "}\n"
        )
