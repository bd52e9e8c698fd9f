"""The task-family contract: deterministic prompts with reference data, and a reference scorer.

A task family knows how to make example `index` of a split and how to score a
response against its reference. It knows nothing about tokenizers, models or
transport: prompts and responses are plain text.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

Split = Literal["train", "eval"]


@dataclass(frozen=True)
class Example:
    prompt: str
    reference: dict[str, Any]
    # Task family that scores this example (lets one JSONL file mix families).
    task: str
    meta: dict[str, Any] = field(default_factory=dict)


class TaskFamily(Protocol):
    name: str
    # True when rewards are graded (use the Max@k form); False for 0/1 rewards.
    graded: bool

    def example(self, index: int, split: Split) -> Example:
        """Example `index` of `split`; the same (index, split, options) always gives the same example."""
        ...

    def size(self, split: Split) -> int | None:
        """Number of examples in `split`, or None if the family generates without end."""
        ...

    def score(self, prompt: str, reference: dict[str, Any], response: str) -> float:
        """Reward of `response`: in {0, 1} for binary families, in [0, 1] for graded ones."""
        ...


def in_eval_split(key: str, eval_fraction: float = 0.1) -> bool:
    """Stable train/eval membership: held-out prompts never appear in training."""
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < eval_fraction


def normalise_answer(text: str) -> str:
    """Whitespace-normalised response text (tokens joined by single spaces)."""
    return " ".join(text.split())
