"""Built-in scorers, the registry, and the combine layer's validation (never a silent 0)."""

from __future__ import annotations

import asyncio
import math

import pytest

from services.common.config import RewardConfig, ScorerSpec
from services.common.errors import ConfigError
from services.reward.scorers import SCORERS, CombinedScorer, ScoreRequest, ScoreResult, Status, build_scorer

CALLABLES = "tests.reward.reward_callables"


def req(responses: list[str], task: str = "max_digit", **reference: object) -> ScoreRequest:
    return ScoreRequest("g", task, "3 7 1 =", reference or {"answer": "7"}, responses)


def score(spec: ScorerSpec, request: ScoreRequest) -> list[ScoreResult]:
    return asyncio.run(build_scorer(spec).score_group(request))


def combined(scorers: list[ScorerSpec], **cfg: float) -> CombinedScorer:
    return CombinedScorer(RewardConfig(scorers=scorers, **cfg))  # type: ignore[arg-type]


def test_registry_has_every_kind() -> None:
    assert {"task", "exact", "math", "regex", "code", "python", "remote"} <= set(SCORERS)


def test_unknown_kind_and_bad_options_name_the_fix() -> None:
    with pytest.raises(ConfigError, match="unknown reward scorer kind 'nope'"):
        build_scorer(ScorerSpec(kind="nope"))
    with pytest.raises(ConfigError, match="pattern"):
        build_scorer(ScorerSpec(kind="regex", options={"pattern": "(unclosed"}))
    with pytest.raises(ConfigError, match="Extra inputs"):
        build_scorer(ScorerSpec(kind="exact", options={"feild": "answer"}))


def test_task_scorer_delegates_to_the_family() -> None:
    results = score(ScorerSpec(kind="task"), req(["7", " 7 ", "3"]))
    assert [r.value for r in results] == [1.0, 1.0, 0.0]
    graded = score(ScorerSpec(kind="task"), req(["1 3 9"], task="digit_sort", answer="1 3 7"))
    assert graded[0].value == pytest.approx(2 / 3)
    assert build_scorer(ScorerSpec(kind="task")).supports("jsonl")
    assert not build_scorer(ScorerSpec(kind="task")).supports("no_such_task")


def test_exact_normalises_and_accepts_lists() -> None:
    spec = ScorerSpec(kind="exact", options={"case_sensitive": False})
    results = score(spec, req(["Paris.", "  paris ", "Lyon"], answer=["paris", "Paris, France"]))
    assert [r.value for r in results] == [1.0, 1.0, 0.0]
    assert score(spec, req(["x"], other="y"))[0].status is Status.INVALID


def test_regex_format_check() -> None:
    spec = ScorerSpec(kind="regex", options={"pattern": r"<answer>\d+</answer>", "reward_match": 0.5})
    assert [r.value for r in score(spec, req(["<answer>7</answer>", "7"]))] == [0.5, 0.0]


def test_python_callables() -> None:
    assert (
        score(ScorerSpec(kind="python", options={"function": f"{CALLABLES}:length_reward"}), req(["abc"]))[0].value
        == 3.0
    )
    assert (
        score(ScorerSpec(kind="python", options={"function": f"{CALLABLES}:async_reward"}), req(["x"]))[0].value == 0.25
    )
    grouped = ScorerSpec(kind="python", options={"function": f"{CALLABLES}:group_reward", "group": True})
    assert [r.value for r in score(grouped, req(["a", "b", "c"]))] == [0.0, 1.0, 2.0]
    slow = ScorerSpec(kind="python", options={"function": f"{CALLABLES}:slow_reward", "timeout_s": 0.1})
    assert score(slow, req(["x"]))[0].status is Status.TIMEOUT
    broken = ScorerSpec(kind="python", options={"function": f"{CALLABLES}:broken_reward"})
    result = score(broken, req(["x"]))[0]
    assert result.status is Status.ERROR and "grader crashed" in result.message
    with pytest.raises(ConfigError, match="cannot import"):
        build_scorer(ScorerSpec(kind="python", options={"function": "no.such.module:f"}))


def test_combine_weighted_sum_with_components() -> None:
    scorer = combined(
        [
            ScorerSpec(kind="exact", weight=1.0),
            ScorerSpec(kind="regex", weight=0.5, options={"pattern": r"^\d$", "name": "format"}),
        ]
    )
    results = asyncio.run(scorer.score_group(req(["7", "3", "seven"])))
    assert [r.value for r in results] == [1.5, 0.5, 0.0]
    assert results[0].components == {"exact": 1.0, "format": 1.0}


def test_combine_never_turns_a_failure_into_zero() -> None:
    scorer = combined(
        [
            ScorerSpec(kind="exact"),
            ScorerSpec(kind="python", options={"function": f"{CALLABLES}:broken_reward"}),
        ]
    )
    results = asyncio.run(scorer.score_group(req(["7", "3"])))
    assert all(r.status is Status.ERROR for r in results)
    assert all(r.message.startswith("python:") for r in results)


@pytest.mark.parametrize(
    ("function", "bounds", "why"),
    [
        ("nan_reward", {}, "non-finite"),
        ("length_reward", {"max_reward": 2.0}, "outside"),
    ],
)
def test_combine_validates_values(function: str, bounds: dict[str, float], why: str) -> None:
    scorer = combined([ScorerSpec(kind="python", options={"function": f"{CALLABLES}:{function}"})], **bounds)
    result = asyncio.run(scorer.score_group(req(["abc"])))[0]
    assert result.status is Status.INVALID and why in result.message
    assert not math.isnan(result.value)


def test_combine_routes_scorers_by_task() -> None:
    scorer = combined(
        [
            ScorerSpec(kind="task", options={"tasks": ["max_digit"]}),
            ScorerSpec(kind="math", options={"tasks": ["gsm"]}),
        ]
    )
    assert scorer.supports("max_digit") and scorer.supports("gsm")
    assert not scorer.supports("digit_sort")
    result = asyncio.run(scorer.score_group(req(["#### 14"], task="gsm", answer="14")))[0]
    assert result.value == 1.0 and set(result.components) == {"math"}
    with pytest.raises(ConfigError, match=r"distinct options\.name"):
        combined([ScorerSpec(kind="exact"), ScorerSpec(kind="exact")])
