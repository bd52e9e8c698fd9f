"""In-process verifiers: task-family reference scoring, exact match, regex format checks.

These are cheap and pure, so they run on the event loop without a thread hop. A
reference that lacks the field a scorer needs makes every response INVALID (the
request is wrong; retrying cannot help), never 0.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Literal

from pydantic import Field, field_validator

from services.common.config import ScorerSpec
from services.common.errors import ConfigError
from services.reward.scorers.base import (
    BaseScorer,
    Options,
    ScoreRequest,
    ScoreResult,
    Status,
    fail_all,
    failed,
    ok,
    parse_options,
    register,
)
from services.tasks import FAMILIES, TaskFamily, get_family
from services.tasks.base import normalise_answer
from services.tasks.jsonl import JsonlTask


def score_each(request: ScoreRequest, fn: Callable[[str], float]) -> list[ScoreResult]:
    """Apply `fn` to each response; an exception becomes that response's ERROR status."""
    out: list[ScoreResult] = []
    for response in request.responses:
        try:
            out.append(ok(fn(response)))
        except Exception as err:  # a scorer bug must not take the group down as a number
            out.append(failed(Status.ERROR, f"{type(err).__name__}: {err}"))
    return out


def reference_answers(reference: dict[str, Any], key: str) -> list[str] | None:
    """The acceptable answers under `key` (a string or a list of strings), or None if absent."""
    value = reference.get(key)
    if value is None:
        return None
    if isinstance(value, list):
        return [str(v) for v in value]
    return [str(value)]


# ---------------------------------------------------------------- task


class TaskOptions(Options):
    pass


class TaskScorer(BaseScorer):
    """Delegates to the reference scorer of the task family named in the request."""

    def __init__(self) -> None:
        # Families are stateless for scoring; one instance per name is enough. 'jsonl' scores
        # by normalised exact match on reference["answer"] and needs no data file for that.
        self._families: dict[str, TaskFamily] = {"jsonl": JsonlTask(data_path="")}

    def supports(self, task: str) -> bool:
        return task in self._families or task in FAMILIES

    def _family(self, task: str) -> TaskFamily:
        if task not in self._families:
            self._families[task] = get_family(task)
        return self._families[task]

    async def score_group(self, request: ScoreRequest) -> list[ScoreResult]:
        try:
            family = self._family(request.task)
        except ConfigError as err:
            return fail_all(len(request.responses), Status.INVALID, err.message)
        return score_each(request, lambda r: family.score(request.prompt, request.reference, r))


@register("task")
def make_task_scorer(spec: ScorerSpec) -> TaskScorer:
    parse_options(TaskOptions, spec)
    return TaskScorer()


# ---------------------------------------------------------------- exact


class ExactOptions(Options):
    field: str = Field("answer", description="Reference key holding the answer (a string or a list of them).")
    normalise: bool = Field(True, description="Collapse whitespace and strip a trailing period before comparing.")
    case_sensitive: bool = True


def _normalise(text: str, opts: ExactOptions) -> str:
    if opts.normalise:
        text = normalise_answer(text).rstrip(".")
    return text if opts.case_sensitive else text.casefold()


class ExactScorer(BaseScorer):
    def __init__(self, opts: ExactOptions) -> None:
        self.opts = opts

    async def score_group(self, request: ScoreRequest) -> list[ScoreResult]:
        answers = reference_answers(request.reference, self.opts.field)
        if answers is None:
            return fail_all(len(request.responses), Status.INVALID, f"reference has no '{self.opts.field}'")
        wanted = {_normalise(a, self.opts) for a in answers}
        return score_each(request, lambda r: 1.0 if _normalise(r, self.opts) in wanted else 0.0)


@register("exact")
def make_exact_scorer(spec: ScorerSpec) -> ExactScorer:
    return ExactScorer(parse_options(ExactOptions, spec))


# ---------------------------------------------------------------- regex


class RegexOptions(Options):
    pattern: str
    mode: Literal["search", "fullmatch"] = "search"
    flags: list[Literal["IGNORECASE", "MULTILINE", "DOTALL"]] = Field(default_factory=list)
    reward_match: float = 1.0
    reward_no_match: float = 0.0
    # Bounds the work of a pathological pattern on a huge response (Python's re can backtrack).
    max_chars: int = Field(20_000, ge=1)

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, v: str) -> str:
        try:
            re.compile(v)
        except re.error as err:
            raise ValueError(f"not a valid regular expression: {err}") from None
        return v


class RegexScorer(BaseScorer):
    def __init__(self, opts: RegexOptions) -> None:
        self.opts = opts
        flags = 0
        for name in opts.flags:
            flags |= getattr(re, name)
        self.regex = re.compile(opts.pattern, flags)

    def _score(self, response: str) -> float:
        text = response[: self.opts.max_chars]
        match = self.regex.search(text) if self.opts.mode == "search" else self.regex.fullmatch(text)
        return self.opts.reward_match if match else self.opts.reward_no_match

    async def score_group(self, request: ScoreRequest) -> list[ScoreResult]:
        return score_each(request, self._score)


@register("regex")
def make_regex_scorer(spec: ScorerSpec) -> RegexScorer:
    return RegexScorer(parse_options(RegexOptions, spec))
