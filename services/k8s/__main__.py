"""`python -m services.k8s COMMAND ...`: the `rspo k8s` commands without the top-level CLI."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from services.k8s.cli import add_k8s_parser, run_k8s


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.k8s")
    sub = parser.add_subparsers(dest="command", required=True)
    add_k8s_parser(sub)
    args = parser.parse_args(["k8s", *(sys.argv[1:] if argv is None else argv)])
    return run_k8s(args)


if __name__ == "__main__":
    sys.exit(main())
