"""Generation and freshness of the Python code generated from `proto/tuneforge/v1/*.proto`.

`make proto` runs `python -m tuneforge.contracts generate`. The generated package `tuneforge.v1`
records a digest of the .proto sources it came from; importing it from a source checkout whose
.proto files no longer match raises `ImportError`, so stale generated code cannot run.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import tempfile
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
GENERATED_DIR = PACKAGE_DIR / "v1"
#: In a source checkout the contracts live at <repo>/proto; installed wheels carry only generated code.
SOURCE_PROTO_ROOT = PACKAGE_DIR.parents[1] / "proto"
DIGEST_MODULE = "_source_digest.py"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def proto_files(proto_root: Path = SOURCE_PROTO_ROOT) -> list[Path]:
    """The .proto files of package tuneforge.v1, sorted by name."""
    return sorted((proto_root / "tuneforge" / "v1").glob("*.proto"))


def sources_digest(proto_root: Path = SOURCE_PROTO_ROOT) -> str:
    """SHA-256 over the names and bytes of the .proto sources."""
    digest = hashlib.sha256()
    for path in proto_files(proto_root):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def generate(out_root: Path, proto_root: Path = SOURCE_PROTO_ROOT) -> list[Path]:
    """Runs grpcio-tools' protoc into `out_root` (which gets `tuneforge/v1/...`); returns the files."""
    from grpc_tools import protoc  # dev dependency: only needed to regenerate

    sources = proto_files(proto_root)
    if not sources:
        raise FileNotFoundError(f"no .proto files under {proto_root}/tuneforge/v1")
    well_known = Path(protoc.__file__).resolve().parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{proto_root}",
        f"-I{well_known}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *(str(p.relative_to(proto_root)) for p in sources),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed; see the messages above")
    target = out_root / "tuneforge" / "v1"
    (target / DIGEST_MODULE).write_text(
        '"""Digest of the .proto sources this package was generated from (written by `make proto`)."""\n\n'
        f'PROTO_SOURCES_SHA256 = "{sources_digest(proto_root)}"\n'
    )
    return sorted(p for p in target.iterdir() if p.name.endswith(GENERATED_SUFFIXES) or p.name == DIGEST_MODULE)


def regenerate_in_place() -> list[Path]:
    """Regenerates `services/tuneforge/v1` from `proto/`, removing generated files of deleted protos."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        for old in GENERATED_DIR.iterdir():
            if old.name.endswith(GENERATED_SUFFIXES):
                old.unlink()
        written = []
        for path in fresh:
            shutil.copyfile(path, GENERATED_DIR / path.name)
            written.append(GENERATED_DIR / path.name)
    return written


def check_fresh(recorded_digest: str) -> None:
    """Raises ImportError when the generated code no longer matches the .proto sources beside it."""
    if not proto_files():
        return  # an installed package: no sources to compare against
    current = sources_digest()
    if current != recorded_digest:
        raise ImportError(
            "the generated code in services/tuneforge/v1 is stale: proto/tuneforge/v1/*.proto changed "
            "after it was generated. Run `make proto` and commit the result."
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tuneforge.contracts")
    parser.add_argument("command", choices=["generate"])
    parser.parse_args(argv)
    for path in regenerate_in_place():
        print(f"wrote {path.relative_to(PACKAGE_DIR.parents[1])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
