"""Generate the Python code of every ``.proto`` in this folder: the one command.

    python -m gpupool.proto.codegen          # rewrite the generated files in place
    python -m gpupool.proto.codegen --check  # exit 1 when they are stale

protoc names imports after the path it was given, so the ``.proto`` files are staged under
``gpupool/proto/`` in a temporary folder: the generated ``_pb2_grpc`` modules then import
``gpupool.proto.gpupool_pb2`` rather than a top-level ``gpupool_pb2``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTOS = sorted(path.name for path in HERE.glob("*.proto"))
GENERATED = tuple(
    name.removesuffix(".proto") + suffix
    for name in PROTOS
    for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")
)


def generate(out_dir: Path) -> None:
    """Write the generated modules for every ``proto/*.proto`` into ``out_dir``."""
    from grpc_tools import protoc  # dev extra: only this command needs it

    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / "gpupool" / "proto"
        staged.mkdir(parents=True)
        for name in PROTOS:
            shutil.copy(HERE / name, staged / name)
        argv = [
            "protoc",
            f"-I{tmp}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *(f"gpupool/proto/{name}" for name in PROTOS),
        ]
        if protoc.main(argv) != 0:
            raise SystemExit("protoc failed")
        for name in GENERATED:
            shutil.copy(staged / name, out_dir / name)


def stale_files() -> list[str]:
    """The generated files that differ from what the ``.proto`` gives now."""
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        return [
            name
            for name in GENERATED
            if not (HERE / name).exists()
            or (Path(tmp) / name).read_bytes() != (HERE / name).read_bytes()
        ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report stale files")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files()
        for name in stale:
            print(f"stale: proto/{name} (run: python -m gpupool.proto.codegen)")
        return 1 if stale else 0
    generate(HERE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
