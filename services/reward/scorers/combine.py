"""Several scorers per task combined by a weighted sum, with every value validated.

Each `ScorerSpec` may carry two common options: `name` (the component name in the
reward's `components`, default its kind) and `tasks` (the task names it applies to,
default all). For a group, the scorers that apply to its task run concurrently; a
response's reward is sum(weight * value). If any part is non-OK for a response, the
response takes that part's status (with the part's name in the message): a failed
part is never replaced by 0. Values must be finite, and the total must lie within
[min_reward, max_reward]; otherwise INVALID.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass

from services.common.config import RewardConfig, ScorerSpec
from services.common.errors import ConfigError
from services.reward.scorers.base import (
    Scorer,
    ScoreRequest,
    ScoreResult,
    Status,
    build_scorer,
    fail_all,
    failed,
)


@dataclass(frozen=True)
class Part:
    name: str
    weight: float
    scorer: Scorer
    tasks: frozenset[str] | None  # None: every task

    def applies(self, task: str) -> bool:
        return (self.tasks is None or task in self.tasks) and self.scorer.supports(task)


def _tasks_option(spec: ScorerSpec) -> frozenset[str] | None:
    tasks = spec.options.get("tasks")
    if tasks is None:
        return None
    if not isinstance(tasks, list) or not all(isinstance(t, str) for t in tasks):
        raise ConfigError(f"reward.scorers[kind={spec.kind}].options.tasks must be a list of task names")
    return frozenset(tasks)


def build_parts(specs: Sequence[ScorerSpec]) -> list[Part]:
    if not specs:
        raise ConfigError("reward.scorers is empty; configure at least one scorer (e.g. kind: task)")
    parts: list[Part] = []
    seen: set[str] = set()
    for spec in specs:
        name = str(spec.options.get("name") or spec.kind)
        if name in seen:
            raise ConfigError(f"two reward scorers are named '{name}'; give each a distinct options.name")
        seen.add(name)
        if not math.isfinite(spec.weight):
            raise ConfigError(f"reward scorer '{name}': weight must be finite")
        parts.append(Part(name, spec.weight, build_scorer(spec), _tasks_option(spec)))
    return parts


def _merge(parts: Sequence[Part], per_part: Sequence[list[ScoreResult]], i: int, lo: float, hi: float) -> ScoreResult:
    """Combine the i-th response's results from every part into one validated result."""
    total, components = 0.0, {}
    for part, results in zip(parts, per_part):
        r = results[i]
        if not r.ok:
            return failed(r.status, f"{part.name}: {r.message}")
        if not math.isfinite(r.value):
            return failed(Status.INVALID, f"{part.name}: non-finite reward {r.value}")
        total += part.weight * r.value
        components[part.name] = r.value
        for key, value in r.components.items():
            components[f"{part.name}.{key}"] = value
    if not math.isfinite(total) or not lo <= total <= hi:
        return failed(Status.INVALID, f"reward {total} outside [{lo}, {hi}]")
    message = "; ".join(f"{p.name}: {results[i].message}" for p, results in zip(parts, per_part) if results[i].message)
    return ScoreResult(total, Status.OK, message[:1000], components)


async def _run_part(part: Part, request: ScoreRequest) -> list[ScoreResult]:
    n = len(request.responses)
    try:
        results = await part.scorer.score_group(request)
    except asyncio.CancelledError:
        raise
    except Exception as err:  # a scorer bug: the group gets ERROR, the service keeps going
        return fail_all(n, Status.ERROR, f"{part.name} raised {type(err).__name__}: {err}")
    if len(results) != n:
        return fail_all(n, Status.INVALID, f"{part.name} returned {len(results)} results for {n} responses")
    return results


class CombinedScorer:
    def __init__(self, cfg: RewardConfig) -> None:
        self.parts = build_parts(cfg.scorers)
        self.lo, self.hi = cfg.min_reward, cfg.max_reward

    def parts_for(self, task: str) -> list[Part]:
        return [p for p in self.parts if p.applies(task)]

    def supports(self, task: str) -> bool:
        return bool(self.parts_for(task))

    async def score_group(self, request: ScoreRequest) -> list[ScoreResult]:
        parts = self.parts_for(request.task)
        if not parts:
            return fail_all(len(request.responses), Status.INVALID, f"no scorer for task '{request.task}'")
        per_part = await asyncio.gather(*(_run_part(p, request) for p in parts))
        return [_merge(parts, per_part, i, self.lo, self.hi) for i in range(len(request.responses))]

    async def close(self) -> None:
        await asyncio.gather(*(p.scorer.close() for p in self.parts), return_exceptions=True)
