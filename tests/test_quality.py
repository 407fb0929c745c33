"""The code's own checks: lint, types, and generated protobuf code that matches the .proto."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SETUPTOOLS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def package_folder(package: str) -> Path:
    """Where ``package`` lives, by pyproject's package-dir (setuptools' nearest-parent rule)."""
    parts = package.split(".")
    for end in range(len(parts), 0, -1):
        mapped = SETUPTOOLS["package-dir"].get(".".join(parts[:end]))
        if mapped is not None:
            return ROOT / mapped / Path(*parts[end:])
    return ROOT / Path(*parts)


def _run(*argv: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_ruff_lint() -> None:
    result = _run(sys.executable, "-m", "ruff", "check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format() -> None:
    result = _run(sys.executable, "-m", "ruff", "format", "--check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy(tmp_path: Path) -> None:
    """mypy cannot follow pyproject's package-dir, so it checks a tree of links in its shape."""
    for package in SETUPTOOLS["packages"]:
        folder = tmp_path / Path(*package.split("."))
        folder.mkdir(parents=True, exist_ok=True)
        for source in package_folder(package).glob("*.py*"):
            (folder / source.name).symlink_to(source)
    result = _run(
        sys.executable,
        "-m",
        "mypy",
        "--config-file",
        str(ROOT / "pyproject.toml"),
        "--cache-dir",
        str(tmp_path / "cache"),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.timeout(120)
def test_generated_protobuf_code_is_fresh() -> None:
    result = _run(sys.executable, "-m", "gpupool.proto.codegen", "--check")
    assert result.returncode == 0, result.stdout + result.stderr
