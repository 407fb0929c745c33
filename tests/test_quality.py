"""The code's own checks: lint, types, and generated protobuf code that matches the .proto."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Import package gpupool.X lives in folder X (pyproject's package-dir).
SUBPACKAGES = ("proto", "server", "client", "scheduler")


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
    package = tmp_path / "gpupool"
    package.mkdir()
    for source in (ROOT / "gpupool").iterdir():
        if source.suffix == ".py":
            (package / source.name).symlink_to(source)
    for name in SUBPACKAGES:
        (package / name).symlink_to(ROOT / name, target_is_directory=True)
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
