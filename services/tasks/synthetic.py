"""Synthetic verifiable task families that a tiny model can learn on a CPU.

- `max_digit` (binary): "3 7 1 =" -> "7". Reward 1 for the exact answer, else 0.
- `digit_sort` (graded): "3 7 1 >" -> "1 3 7". Reward = fraction of answer
  positions right (extra or missing tokens count as wrong), so partial credit
  makes Max@k the natural objective.

Examples are a pure function of (seed, split, index): prompts are drawn by a
counter-based RNG and assigned to train or eval by a hash of the prompt, so the
held-out set never overlaps training.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from services.tasks.base import Example, Split, in_eval_split, normalise_answer


@dataclass(frozen=True)
class _DigitTask:
    name: str
    graded: bool
    separator: str
    answer_fn: Callable[[list[int]], list[int]]
    min_len: int = 3
    max_len: int = 5
    seed: int = 0

    def example(self, index: int, split: Split) -> Example:
        # Rejection-sample prompts until one hashes into the wanted split: O(1) expected per
        # example, deterministic in (seed, split, index), and train/eval never overlap.
        attempt = 0
        while True:
            rng = random.Random(f"{self.name}:{self.seed}:{split}:{index}:{attempt}")
            digits = [rng.randint(0, 9) for _ in range(rng.randint(self.min_len, self.max_len))]
            prompt = " ".join(map(str, digits)) + f" {self.separator}"
            if in_eval_split(prompt) == (split == "eval"):
                answer = " ".join(map(str, self.answer_fn(digits)))
                return Example(prompt=prompt, reference={"answer": answer}, task=self.name)
            attempt += 1

    def size(self, split: Split) -> int | None:
        return None

    def score(self, prompt: str, reference: dict[str, Any], response: str) -> float:
        want = str(reference["answer"]).split()
        got = normalise_answer(response).split()
        if not self.graded:
            return 1.0 if got == want else 0.0
        right = sum(a == b for a, b in zip(got, want))
        return right / max(len(want), len(got))


def max_digit(**options: Any) -> _DigitTask:
    return _DigitTask("max_digit", graded=False, separator="=", answer_fn=lambda d: [max(d)], **options)


def digit_sort(**options: Any) -> _DigitTask:
    return _DigitTask("digit_sort", graded=True, separator=">", answer_fn=sorted, **options)
