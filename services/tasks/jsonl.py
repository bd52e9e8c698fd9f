"""Task family over a local JSONL file (real data sets, no download).

Each line: {"prompt": str, "answer": str} or {"prompt": str, "reference": {...}},
optionally "task": the family that scores it (default: exact match on
"answer" after whitespace normalisation). Training reads `data_path`; eval reads
`eval_path` if given, else every 10th line of `data_path` (then held out from training).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.common.errors import ConfigError
from services.tasks.base import Example, Split, normalise_answer


def read_jsonl(path: str | Path) -> list[Example]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"task data file {p} does not exist; set task.data_path to a JSONL file")
    out: list[Example] = []
    for lineno, line in enumerate(p.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{p}:{lineno}: not JSON ({err}); one JSON object per line") from None
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
            raise ConfigError(f"{p}:{lineno}: each line needs a string field 'prompt'")
        reference = row.get("reference", {"answer": row.get("answer")})
        if not isinstance(reference, dict):
            raise ConfigError(f"{p}:{lineno}: 'reference' must be a JSON object")
        out.append(Example(prompt=row["prompt"], reference=reference, task=str(row.get("task", "jsonl"))))
    if not out:
        raise ConfigError(f"{p} holds no examples")
    return out


@dataclass
class JsonlTask:
    data_path: str
    eval_path: str | None = None
    graded: bool = False
    name: str = "jsonl"
    _splits: dict[str, list[Example]] = field(default_factory=dict, init=False, repr=False)

    def _load(self) -> dict[str, list[Example]]:
        if not self._splits:
            rows = read_jsonl(self.data_path)
            if self.eval_path:
                self._splits = {"train": rows, "eval": read_jsonl(self.eval_path)}
            else:
                self._splits = {
                    "train": [r for i, r in enumerate(rows) if i % 10 != 9],
                    "eval": [r for i, r in enumerate(rows) if i % 10 == 9] or rows[:1],
                }
        return self._splits

    def example(self, index: int, split: Split) -> Example:
        rows = self._load()[split]
        return rows[index % len(rows)]

    def size(self, split: Split) -> int | None:
        return len(self._load()[split])

    def score(self, prompt: str, reference: dict[str, Any], response: str) -> float:
        answer = reference.get("answer")
        if answer is None:
            raise ValueError("jsonl reference has no 'answer'; configure a reward scorer for this data")
        return 1.0 if normalise_answer(response) == normalise_answer(str(answer)) else 0.0
