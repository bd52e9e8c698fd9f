"""`rspo k8s`: launch and operate a training run on Kubernetes (see docs/deploy.md).

`services.cli` wires it in with `add_k8s_parser(subparsers)` and `run_k8s(args)`;
`python -m services.k8s ...` runs the same commands standalone.
"""

from services.k8s.cli import add_k8s_parser, run_k8s

__all__ = ["add_k8s_parser", "run_k8s"]
