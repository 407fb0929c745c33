"""What the shim does not cover raises ``NotImplementedError`` naming it: never a wrong answer."""

from __future__ import annotations

from collections.abc import Callable
from typing import NoReturn

SUPPORT_TABLE = "docs/cupy.md"


class NotSupportedError(NotImplementedError, AttributeError):
    """A CuPy name or case the shim does not cover.

    Also an AttributeError, so that ``hasattr(cupy, name)`` probes answer False instead of
    failing.
    """


def unsupported_message(name: str) -> str:
    return (
        f"{name} is not supported by gpupool.cupy; the support table in {SUPPORT_TABLE}"
        " lists what is"
    )


def unsupported(name: str) -> NoReturn:
    raise NotSupportedError(unsupported_message(name))


def module_getattr(module: str) -> Callable[[str], NoReturn]:
    """A module ``__getattr__`` that turns every other CuPy name into NotImplementedError.

    Dunder names stay AttributeError, so that ``hasattr``/``copy``/``pickle`` probes work.
    """

    def __getattr__(name: str) -> NoReturn:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        unsupported(f"{module.replace('gpupool.cupy', 'cupy')}.{name}")

    return __getattr__
