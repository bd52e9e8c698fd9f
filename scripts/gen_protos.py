"""Regenerate rspo_proto/ from protos/ (Python, gRPC and mypy stubs).

The .proto files live at protos/rspo_proto/v1/*.proto, so with `-I protos` the
generated modules land at rspo_proto/v1/*_pb2.py and import each other as
`rspo_proto.v1.x_pb2`: correct by construction, no import rewriting.

Usage: python scripts/gen_protos.py [--out DIR]   (default: the repo root)
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"


def generate(out_dir: Path) -> None:
    from grpc_tools import protoc  # dev dependency only

    # protoc finds the mypy plugins on PATH; they sit next to this interpreter.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"

    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    out_dir.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *protos,
    ]
    if protoc.main(args) != 0:
        sys.exit("protoc failed")
    for pkg in {out_dir / Path(p).parent for p in protos} | {out_dir / "rspo_proto"}:
        init = pkg / "__init__.py"
        if not init.exists():
            init.write_text('"""Generated from protos/ by scripts/gen_protos.py; do not edit."""\n')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT)
    generate(parser.parse_args().out)


if __name__ == "__main__":
    main()
