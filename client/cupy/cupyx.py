"""``cupyx`` under ``gpupool run``: CuPy's extras that the shim covers (``cupyx.distributed``).

A program that imports ``cupyx`` starts; using another name from it raises
``NotImplementedError`` naming it, so that nothing silently runs differently (docs/cupy.md).
"""

from typing import NoReturn

from gpupool.cupy import distributed


def __getattr__(name: str) -> NoReturn:
    if name.startswith("__"):
        raise AttributeError(name)
    raise NotImplementedError(
        f"cupyx.{name} is not supported by gpupool's CuPy shim (docs/cupy.md)"
    )


__all__ = ["distributed"]
