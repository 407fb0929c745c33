"""A tensor on a pool device: PyTorch's metadata here, its bytes in the daemon's memory.

``RemoteTensor`` is a wrapper subclass (``torch.Tensor._make_wrapper_subclass``): PyTorch
keeps its shape, strides, dtype and device (``gpupool:i``), autograd works on it as on any
tensor, and every ATen operation on it reaches ``__torch_dispatch__`` (``_dispatch.py``).
Its storage is a block of device memory (``_mem``, shared by its views) and ``_ptr`` is the
address of its element 0. A view is a new wrapper over the same block, worked out here.
"""

from __future__ import annotations

from typing import Any

import torch

from gpupool.client import addressing
from gpupool.cupy.cuda.memory import MemoryPointer


class RemoteTensor(torch.Tensor):
    """A tensor whose data lives on a pool device."""

    _mem: MemoryPointer
    _ptr: int
    _key: tuple[Any, ...]
    _index: int

    @staticmethod
    def __new__(
        cls,
        mem: MemoryPointer,
        index: int,
        shape: tuple[int, ...],
        strides: tuple[int, ...],
        offset: int,
        dtype: torch.dtype,
    ) -> RemoteTensor:
        tensor = torch.Tensor._make_wrapper_subclass(
            cls,
            shape,
            strides=strides,
            storage_offset=offset,
            dtype=dtype,
            device=torch.device("gpupool", index),
        )
        tensor._mem = mem
        tensor._index = index
        # the daemon's own address: what the torch shim's requests carry
        tensor._ptr = addressing.raw(mem.ptr) + offset * dtype.itemsize
        tensor._key = (dtype, shape, strides, offset, index)
        return tensor

    __torch_function__ = torch._C._disabled_torch_function_impl  # type: ignore[assignment]

    @classmethod
    def __torch_dispatch__(  # type: ignore[override]
        cls, func: Any, types: Any, args: Any = (), kwargs: Any = None
    ) -> Any:
        from gpupool.torch._dispatch import dispatch

        return dispatch(func, args, kwargs or {})

    def __repr__(self, *, tensor_contents: Any = None) -> str:  # type: ignore[override]
        text = repr(self.detach().cpu())
        suffix = f", device='{self.device}'"
        if self.requires_grad:
            suffix += ", requires_grad=True"
        return text[:-1] + suffix + ")" if text.endswith(")") else text

    def __format__(self, spec: str) -> str:
        if self.dim() == 0:  # as PyTorch formats a plain 0-dim tensor: its value
            return self.item().__format__(spec)
        return repr(self) if not spec else object.__format__(self, spec)

    def tolist(self) -> Any:
        return self.detach().cpu().tolist()

    def numpy(self, *, force: bool = False) -> Any:
        if self.requires_grad and not force:
            raise RuntimeError(
                "Can't call numpy() on Tensor that requires grad. Use tensor.detach().numpy()"
            )
        raise TypeError(
            f"can't convert {self.device} device type tensor to numpy. Use Tensor.cpu() to"
            " copy the tensor to host memory first."
        )

    def __deepcopy__(self, memo: dict[int, Any]) -> RemoteTensor:
        copied = self.detach().clone()
        copied.requires_grad_(self.requires_grad)
        memo[id(self)] = copied
        return copied  # type: ignore[return-value]

    def __reduce_ex__(self, protocol: Any) -> Any:
        """Pickled (``torch.save``) as its host copy and its ordinal; loaded back onto that
        device, as CUDA tensors are."""
        return rebuild, (self.detach().cpu(), self._index, self.requires_grad)


def rebuild(host: torch.Tensor, index: int, requires_grad: bool) -> torch.Tensor:
    """A saved device tensor, back on ordinal ``index``."""
    tensor = host.to(torch.device("gpupool", index))
    return tensor.requires_grad_(requires_grad) if requires_grad else tensor
