"""rspo_core is pure: it imports only torch, numpy, the standard library and itself."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

CORE = Path(__file__).resolve().parents[2] / "rspo_core"
ALLOWED = {"torch", "numpy", "rspo_core", "__future__"} | set(sys.stdlib_module_names)


def test_only_torch_numpy_stdlib_imports() -> None:
    files = sorted(CORE.glob("**/*.py"))
    assert len(files) >= 5
    offenders = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""] if node.level == 0 else ["rspo_core"]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] not in ALLOWED]
    assert offenders == []


def test_import_pulls_in_no_service_libraries() -> None:
    code = (
        "import sys, rspo_core; bad = [m for m in ('grpc', 'redis', 'pydantic', 'transformers', 'services') "
        "if m in sys.modules]; print(bad); assert not bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=CORE.parent)
