"""Make ``import cupy`` (and ``cupyx``) load ``gpupool.cupy``, for ``gpupool run``.

``gpupool run`` puts :data:`BOOTSTRAP_DIR` first on the command's ``PYTHONPATH``. Python runs
the ``sitecustomize`` there at start-up, in the command and in every Python subprocess it
starts (they inherit the variable); it installs :class:`CupyAliases` at the front of
``sys.meta_path`` (so it wins over a real CuPy installed beside) and then runs the
``sitecustomize`` that was there before, if any. ``cupy`` and its submodules are then the
very module objects of ``gpupool.cupy``: ``import cupy.cuda.runtime`` gives
``gpupool.cupy.cuda.runtime``.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType

BOOTSTRAP_DIR = Path(__file__).with_name("bootstrap")
ALIASES = {"cupy": "gpupool.cupy", "cupyx": "gpupool.cupy.cupyx"}


def _target(fullname: str) -> str | None:
    top, _, rest = fullname.partition(".")
    base = ALIASES.get(top)
    if base is None:
        return None
    return f"{base}.{rest}" if rest else base


def _resolve(target: str) -> ModuleType:
    """The module ``target`` names: imported, or a module-valued attribute of its parent
    (``gpupool.cupy.cuda.runtime`` is ``gpupool.client.runtime`` re-exported)."""
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as exc:
        parent, _, name = target.rpartition(".")
        if exc.name != target or not parent:
            raise
        found = getattr(importlib.import_module(parent), name, None)
        if isinstance(found, ModuleType):
            return found
        raise


class _ExistingModule(importlib.abc.Loader):
    """Loads an alias as the already imported target module itself."""

    def __init__(self, module: ModuleType) -> None:
        self.module = module

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        return self.module

    def exec_module(self, module: ModuleType) -> None:
        """Nothing to run: the target module was executed when it was imported."""


class CupyAliases(importlib.abc.MetaPathFinder):
    """Finds ``cupy``/``cupyx`` and their submodules as ``gpupool.cupy``'s modules."""

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None = None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        name = _target(fullname)
        if name is None:
            return None
        try:
            module = _resolve(name)
        except ModuleNotFoundError as exc:
            raise ModuleNotFoundError(
                f"No module named {fullname!r}: gpupool's CuPy shim has no {name} "
                "(see docs/cupy.md for what is supported)",
                name=fullname,
            ) from exc
        # cupyx is a package to the importer, so that ``import cupyx.scipy`` reaches this
        # finder and its NotImplementedError, not "'cupyx' is not a package"
        is_package = hasattr(module, "__path__") or fullname == "cupyx"
        return importlib.machinery.ModuleSpec(
            fullname, _ExistingModule(module), is_package=is_package
        )


def install() -> None:
    """Put the aliases first on ``sys.meta_path`` (once)."""
    if not any(isinstance(finder, CupyAliases) for finder in sys.meta_path):
        sys.meta_path.insert(0, CupyAliases())


def environment(env: dict[str, str]) -> dict[str, str]:
    """``env`` with the bootstrap folder first on ``PYTHONPATH``."""
    paths = [str(BOOTSTRAP_DIR), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    return {**env, "PYTHONPATH": os.pathsep.join(dict.fromkeys(paths))}


def run_next_sitecustomize(own_dir: str) -> None:
    """Run the ``sitecustomize`` that the bootstrap's own shadows, if there is one."""
    own = os.path.realpath(own_dir)
    saved_path = sys.path[:]
    ours = sys.modules.pop("sitecustomize", None)
    sys.path[:] = [p for p in sys.path if os.path.realpath(p or ".") != own]
    try:
        importlib.import_module("sitecustomize")
    except ModuleNotFoundError as exc:
        if exc.name != "sitecustomize":
            raise
    finally:
        sys.path[:] = saved_path
        if ours is not None:
            sys.modules["sitecustomize"] = ours


class AfterImport(importlib.abc.MetaPathFinder):
    """Runs ``hook`` once the module ``name`` has been imported (its top level executed):
    ``gpupool run --torch`` adapts torch as soon as the program imports it, and costs a
    program that never does nothing."""

    def __init__(self, name: str, hook: Callable[[], None]) -> None:
        self.name = name
        self.hook = hook

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None = None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)  # once, and not for the lookup below
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        loader, hook = spec.loader, self.hook

        class _Then(importlib.abc.Loader):
            def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
                return loader.create_module(spec)

            def exec_module(self, module: ModuleType) -> None:
                loader.exec_module(module)
                hook()

        spec.loader = _Then()
        return spec


def after_import(name: str, hook: Callable[[], None]) -> None:
    """Run ``hook`` right after ``name`` is first imported (at once if it already was)."""
    if name in sys.modules:
        hook()
    else:
        sys.meta_path.insert(0, AfterImport(name, hook))
