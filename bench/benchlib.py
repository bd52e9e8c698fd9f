"""Shared helpers for every benchmark: machine description and result writing (bench/results/)."""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def machine() -> dict[str, Any]:
    import torch

    return {
        "processor": platform.processor() or platform.machine(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def write_results(name: str, data: dict[str, Any], markdown: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    data = {"machine": machine(), **data}
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
    m = data["machine"]
    header = (
        f"Machine: {m['processor']} ({m['platform']}), {m['cpu_count']} CPUs, "
        f"torch {m['torch']} ({m['torch_threads']} threads), Python {m['python']}\n\n"
    )
    (RESULTS / f"{name}.md").write_text(header + markdown + "\n")
    print(f"wrote {RESULTS / name}.json and .md")
