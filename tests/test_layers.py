"""The layer order, checked on the source: each module imports only its own layer or lower ones.

core (errors, units, addresses, logs, grants, proto) → transport → client / server / scheduler
(which do not import one another) → shims (gpupool.cupy, then gpupool.torch, which builds on
its memory pools) → CLI / bench (and gpupool run's start-up hook, client/bootstrap). Every
import counts, at module level or inside a function, so a lazy import cannot hide a
dependency; so does ``importlib.import_module`` of a constant name.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SETUPTOOLS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]

# (prefix, layer, group): the longest matching prefix decides. A group is a sibling inside its
# layer that the others of that layer may not import. The package root is core: Python runs it
# for every gpupool import, so it imports only core at run time and names the client's
# functions lazily (its ``if TYPE_CHECKING:`` imports, for type checkers, are not counted).
# gpupool.runtime is the client's public face, so it sits with it.
LAYERS: list[tuple[str, int, str]] = [
    ("gpupool", 0, "core"),
    ("gpupool.errors", 0, "core"),
    ("gpupool.units", 0, "core"),
    ("gpupool.addresses", 0, "core"),
    ("gpupool.logs", 0, "core"),
    ("gpupool.grants", 0, "core"),
    ("gpupool.arrayshapes", 0, "core"),
    ("gpupool.proto", 0, "core"),
    ("gpupool.transport", 1, "transport"),
    ("gpupool.runtime", 2, "client"),
    ("gpupool.client", 2, "client"),
    ("gpupool.server", 2, "server"),
    ("gpupool.scheduler", 2, "scheduler"),
    ("gpupool.cupy", 3, "cupy"),
    ("gpupool.torch", 3, "torch"),
    ("gpupool.cli", 4, "cli"),
    ("gpupool.client.bootstrap", 4, "cli"),  # gpupool run's start-up hook, in the program
    ("gpupool.bench", 4, "cli"),
    ("gpupool.elastic", 4, "cli"),  # attach/detach: the client with the embedded pool
]
NAMES = {"core", "transport", "client", "server", "scheduler", "cupy", "torch", "cli"}
# Siblings a group builds on: the torch shim allocates from the CuPy shim's memory pools, so a
# process's two shims share one pool (and its out-of-memory retries) per device.
BUILDS_ON = {("torch", "cupy")}


def layer_of(module: str) -> tuple[int, str]:
    best: tuple[str, int, str] | None = None
    for prefix, layer, group in LAYERS:
        if (module == prefix or module.startswith(prefix + ".")) and (
            best is None or len(prefix) > len(best[0])
        ):
            best = (prefix, layer, group)
    assert best is not None, f"{module} is in no layer: add it to LAYERS"
    return best[1], best[2]


def package_folder(package: str) -> Path:
    """Where ``package`` lives, by pyproject's package-dir (setuptools' nearest-parent rule)."""
    parts = package.split(".")
    for end in range(len(parts), 0, -1):
        mapped = SETUPTOOLS["package-dir"].get(".".join(parts[:end]))
        if mapped is not None:
            return ROOT / mapped / Path(*parts[end:])
    return ROOT / Path(*parts)


def modules() -> dict[str, Path]:
    """Every module of the installed packages, by dotted name (client/bootstrap included)."""
    found: dict[str, Path] = {}
    for package in SETUPTOOLS["packages"]:
        for source in sorted(package_folder(package).glob("*.py")):
            name = package if source.stem == "__init__" else f"{package}.{source.stem}"
            found[name] = source
    for source in sorted((package_folder("gpupool.client") / "bootstrap").glob("*.py")):
        found[f"gpupool.client.bootstrap.{source.stem}"] = source
    return found


def imported(name: str, source: Path, known: set[str]) -> set[str]:
    """The gpupool modules ``source`` imports, anywhere in it."""
    package = name if source.stem == "__init__" else name.rpartition(".")[0]
    found: set[str] = set()
    tree = ast.parse(source.read_text(), str(source))
    if name == "gpupool":
        tree.body = [node for node in tree.body if not _type_checking_only(node)]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:  # `from gpupool import logs` imports gpupool.logs
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id)
            == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.add(node.args[0].value)
    return {module for module in found if module == "gpupool" or module.startswith("gpupool.")}


def _type_checking_only(node: ast.stmt) -> bool:
    return isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"


def test_the_root_names_the_client_lazily() -> None:
    import gpupool

    assert {layer_of(module)[1] for module in gpupool._LAZY.values()} == {"client", "cli"}
    assert set(gpupool._LAZY) <= set(gpupool.__all__)


def test_every_module_imports_only_its_layer_or_lower_ones() -> None:
    found = modules()
    assert {"gpupool.transport.links", "gpupool.server.worker", "gpupool.cupy"} <= set(found)
    known = set(found)
    wrong = []
    for name, source in found.items():
        layer, group = layer_of(name)
        for target in sorted(imported(name, source, known)):
            their_layer, their_group = layer_of(target)
            sibling = their_group != group and (group, their_group) not in BUILDS_ON
            if their_layer > layer or (their_layer == layer and sibling):
                wrong.append(f"{name} ({group}) imports {target} ({their_group})")
    assert not wrong, "\n".join(wrong)


def test_the_checker_sees_imports_inside_functions() -> None:
    """The check itself can fail: a function-level import of the client from a server module."""
    source = ROOT / "tests" / "_layer_probe.py"
    try:
        source.write_text("def f():\n    from gpupool.client.session import Session\n")
        found = imported("gpupool.server.probe", source, set(modules()))
    finally:
        source.unlink()
    assert found == {"gpupool.client.session"}
    assert layer_of("gpupool.client.session") > layer_of("gpupool.transport.links")
    assert {group for _prefix, _layer, group in LAYERS} == NAMES


@pytest.mark.timeout(60)
def test_a_worker_never_imports_the_client() -> None:
    """A daemon's worker is a fresh interpreter running gpupool.server.worker."""
    check = (
        "import sys, gpupool.server.worker\n"
        "grpc = 'grpc' in sys.modules  # a worker reaches peers over tcp:// and shm:// only\n"
        "import gpupool.server.daemon\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[:2] == ['gpupool', 'client'])\n"
        "print(bad, grpc)\n"
        "sys.exit(1 if bad or grpc else 0)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, timeout=50
    )
    assert result.returncode == 0, result.stdout + result.stderr
