"""Regenerate ``ctrader_twisted/messages/*_pb2.py`` and ``*_pb2.pyi`` from ``protobuf/*.proto``.

Run through ``make generate``.  With ``--check`` nothing is written: the script exits 1 and names
the files whose committed contents differ from a fresh generation.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "protobuf"
OUT_DIR = ROOT / "ctrader_twisted" / "messages"
_IMPORT = re.compile(r"^import (\w+_pb2) as (\w+)$", re.MULTILINE)
# protoc names the module by the .proto's path ("OpenApiMessages_pb2"), and the builder stamps that
# name on every class as ``__module__``; pickle then looks for a top-level module that does not
# exist.  The classes must carry the name they are importable under.
_BUILD = re.compile(
    r"^(_builder\.BuildTopDescriptorsAndMessages\(DESCRIPTOR, )'(\w+_pb2)'", re.MULTILINE
)
PACKAGE = "ctrader_twisted.messages"


def _generate(into: Path) -> list[Path]:
    protos = sorted(PROTO_DIR.glob("*.proto"))
    plugin = Path(sys.executable).parent / "protoc-gen-mypy"
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"--proto_path={PROTO_DIR}",
        f"--python_out={into}",
        f"--mypy_out={into}",
        f"--plugin=protoc-gen-mypy={plugin}",
        *(p.name for p in protos),
    ]
    subprocess.run(cmd, check=True, cwd=PROTO_DIR)
    produced = sorted(into.glob("*_pb2.py*"))
    for path in produced:
        text = path.read_text()
        # protoc writes top-level imports; inside our package they must be relative.
        text = _IMPORT.sub(r"from . import \1 as \2", text)
        text = _BUILD.sub(rf"\1'{PACKAGE}.\2'", text)
        path.write_text(text)
    return produced


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="only compare, write nothing")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        produced = _generate(Path(tmp))
        stale = []
        for path in produced:
            target = OUT_DIR / path.name
            if not target.exists() or target.read_bytes() != path.read_bytes():
                stale.append(target)
                if not args.check:
                    shutil.copyfile(path, target)
        names = {p.name for p in produced}
        extra = [p for p in OUT_DIR.glob("*_pb2.py*") if p.name not in names]
    if args.check:
        for path in [*stale, *extra]:
            print(f"out of date: {path.relative_to(ROOT)}", file=sys.stderr)
        if stale or extra:
            print("run 'make generate' and commit the result", file=sys.stderr)
            return 1
        return 0
    for path in extra:
        path.unlink()
    print(f"generated {len(produced)} files into {OUT_DIR.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
