"""Math answer equivalence: equivalent pairs, non-equivalent pairs, hostile inputs, the scorer."""

from __future__ import annotations

import asyncio

import pytest

from services.common.config import ScorerSpec
from services.reward.scorers import ScoreRequest, Status, build_scorer
from services.reward.scorers.math import equivalent, extract_answer

EQUIVALENT = [
    ("0.5", "\\frac{1}{2}"),
    ("1/2", "\\dfrac{1}{2}"),
    ("\\frac{\\sqrt{2}}{2}", "1/\\sqrt{2}"),
    ("2x+2", "2(x+1)"),
    ("x^2-1", "(x-1)(x+1)"),
    ("1,000", "1000"),
    ("x = 3", "3"),
    ("(1, 2)", "1,2"),
    ("3\\pi", "3 \\cdot \\pi"),
    ("2^{10}", "1024"),
    ("\\sqrt{8}", "2\\sqrt{2}"),
    ("\\sin(x)^2+\\cos(x)^2", "1"),
    ("\\text{blue}", "blue"),
    ("-\\frac{3}{4}", "-0.75"),
]
NOT_EQUIVALENT = [
    ("\\frac{1}{3}", "0.33"),
    ("x^2+1", "x^2-1"),
    ("3", "-3"),
    ("(1,2)", "(2,1)"),
    ("2x", "2y"),
    ("1/0", "1"),
    ("blue", "red"),
]
HOSTILE = ["9^9^9^9", "10^{100000}", "__import__('os').system('true')", "exec(chr(49))", "x" * 5000]


@pytest.mark.parametrize(("a", "b"), EQUIVALENT)
def test_equivalent_pairs(a: str, b: str) -> None:
    assert equivalent(a, b)
    assert equivalent(b, a)


@pytest.mark.parametrize(("a", "b"), NOT_EQUIVALENT)
def test_non_equivalent_pairs(a: str, b: str) -> None:
    assert not equivalent(a, b)


@pytest.mark.timeout(30)  # a guard against a hang (the verifier's own time limit is far lower), not a timing check
@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_inputs_are_refused(text: str) -> None:
    assert not equivalent(text, "1")


def test_extract_answer() -> None:
    assert extract_answer("so \\boxed{\\frac{1}{2}} it is") == "\\frac{1}{2}"
    assert extract_answer("work... #### 42") == "42"
    assert extract_answer("The answer is 7") == "7"


def test_math_scorer_scores_a_group() -> None:
    scorer = build_scorer(ScorerSpec(kind="math", options={"timeout_s": 2.0}))
    req = ScoreRequest("g", "any", "p", {"answer": "\\frac{1}{2}"}, ["\\boxed{0.5}", "#### 2/4", "1/3"])
    results = asyncio.run(scorer.score_group(req))
    assert [r.status for r in results] == [Status.OK] * 3
    assert [r.value for r in results] == [1.0, 1.0, 0.0]
    missing = asyncio.run(scorer.score_group(ScoreRequest("g", "any", "p", {}, ["1"])))
    assert missing[0].status is Status.INVALID
