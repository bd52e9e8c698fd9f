"""The scorer contract: a group in, one `ScoreResult` per response out, plus the registry.

A scorer never turns a failure into a number: a response it could not score gets
a non-OK `Status` with a message, and the caller (trainer) retries or drops the
whole group. Scorers know nothing about gRPC servers; `Status` mirrors the proto's
`RewardStatus` numbers so the conversion at the edge is a plain cast.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from services.common.config import ScorerSpec
from services.common.errors import ConfigError


class Status(enum.IntEnum):
    """Same numbers as `rspo.v1.RewardStatus`."""

    OK = 1
    TIMEOUT = 2
    ERROR = 3
    INVALID = 4


@dataclass(frozen=True)
class ScoreRequest:
    group_id: str
    task: str
    prompt: str
    # Parsed `reference_json` (always a JSON object).
    reference: dict[str, Any]
    responses: Sequence[str]


@dataclass(frozen=True)
class ScoreResult:
    value: float
    status: Status = Status.OK
    message: str = ""
    components: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status is Status.OK


def ok(value: float, message: str = "") -> ScoreResult:
    return ScoreResult(value=float(value), status=Status.OK, message=message)


def failed(status: Status, message: str) -> ScoreResult:
    # value 0.0 is only a placeholder: it is meaningless unless status is OK.
    return ScoreResult(value=0.0, status=status, message=message)


def fail_all(n: int, status: Status, message: str) -> list[ScoreResult]:
    return [failed(status, message) for _ in range(n)]


class Scorer(Protocol):
    async def score_group(self, request: ScoreRequest) -> list[ScoreResult]:
        """Exactly one result per response, in order."""
        ...

    def supports(self, task: str) -> bool:
        """Whether this scorer can score groups of `task` (unknown task -> INVALID_ARGUMENT)."""
        ...

    async def close(self) -> None: ...


class Options(BaseModel):
    """Base for per-scorer option models: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class BaseScorer:
    """Default `supports`/`close`; subclasses implement `score_group`."""

    def supports(self, task: str) -> bool:
        return True

    async def close(self) -> None:
        return None


ScorerFactory = Callable[[ScorerSpec], Scorer]

# Registry keyed by `ScorerSpec.kind`; filled by the `register` decorator in each scorer module.
SCORERS: dict[str, ScorerFactory] = {}

F = TypeVar("F", bound=ScorerFactory)
O = TypeVar("O", bound=Options)

# Keys every scorer accepts in `options`; consumed by the combine layer, not by the scorer.
COMMON_OPTION_KEYS = frozenset({"name", "tasks"})


def register(kind: str) -> Callable[[F], F]:
    def deco(factory: F) -> F:
        if kind in SCORERS:
            raise RuntimeError(f"scorer kind '{kind}' registered twice")
        SCORERS[kind] = factory
        return factory

    return deco


def parse_options(model: type[O], spec: ScorerSpec) -> O:
    """Validate `spec.options` (minus the common keys) into `model`, naming the scorer in errors."""
    raw = {k: v for k, v in spec.options.items() if k not in COMMON_OPTION_KEYS}
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '<options>'}: {e['msg']}" for e in err.errors())
        raise ConfigError(f"reward.scorers[kind={spec.kind}].options: {problems}") from None


def build_scorer(spec: ScorerSpec) -> Scorer:
    try:
        factory = SCORERS[spec.kind]
    except KeyError:
        raise ConfigError(f"unknown reward scorer kind '{spec.kind}'; choose one of {sorted(SCORERS)}") from None
    return factory(spec)
