"""Exact unbiasedness: E over all count vectors of n draws equals the analytic gradient.

Softmax policies over 3-5 outcomes with rational probabilities; grad log pi(y) = e_y - p.
The brute-force definitions are checked exactly (Fractions); the library's float64 output is
averaged exactly (Fraction(float)) and must agree to 1e-10. GRPO and Pass@k Training must be biased.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from fractions import Fraction

import core_oracles as orc
import pytest
import torch

from rspo_core import compute_advantages

F = Fraction
# (probabilities, rewards): ties (two outcomes share a reward), negatives, 3-5 outcomes
CONTINUOUS = [
    ([F(1, 2), F(1, 3), F(1, 6)], [F(0), F(1, 2), F(1)]),
    ([F(1, 5), F(2, 5), F(1, 10), F(3, 10)], [F(1, 4), F(1, 4), F(-1, 2), F(1)]),
    ([F(1, 7), F(2, 7), F(1, 7), F(2, 7), F(1, 7)], [F(0), F(3, 4), F(3, 4), F(-1), F(1, 2)]),
]
BINARY = [
    ([F(3, 5), F(1, 5), F(1, 5)], [F(0), F(1), F(0)]),
    ([F(1, 10), F(1, 2), F(1, 5), F(1, 5)], [F(1), F(0), F(1), F(0)]),
]
CASES_NK = [(1, 1), (2, 2), (3, 2), (4, 2), (4, 3), (5, 4), (6, 3)]


def _lib(method: str, k: int, **kw: float) -> Callable[[list[Fraction]], list[Fraction]]:
    def sum_form(r: list[Fraction]) -> list[Fraction]:
        a = compute_advantages([[float(x) for x in r]], k, method, **kw)[0]
        return [F(float(x)) / len(r) for x in a.tolist()]

    return sum_form


def _maxdiff(a: Sequence[Fraction], b: Sequence[Fraction]) -> float:
    return max(abs(float(x - y)) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("case", range(len(CONTINUOUS)))
def test_max_at_k_estimators_unbiased(case: int) -> None:
    p, v = CONTINUOUS[case]
    for n, k in CASES_NK:
        grad = orc.grad_max_at_k(p, v, k)
        assert orc.expected_gradient(p, v, n, lambda r, k=k: orc.rspo_sum_form(r, k)) == grad
        assert orc.expected_gradient(p, v, n, lambda r, k=k: orc.pkpo_sum_form(r, k)) == grad
        assert _maxdiff(orc.expected_gradient(p, v, n, _lib("rspo", k)), grad) < 1e-10
        assert _maxdiff(orc.expected_gradient(p, v, n, _lib("pkpo", k)), grad) < 1e-10
        if n >= k + 1:
            assert orc.expected_gradient(p, v, n, lambda r, k=k: orc.pkpo_loo_sum_form(r, k)) == grad
            assert _maxdiff(orc.expected_gradient(p, v, n, _lib("pkpo_loo", k)), grad) < 1e-10


@pytest.mark.parametrize("case", range(len(BINARY)))
def test_pass_at_k_estimators_unbiased(case: int) -> None:
    p, v = BINARY[case]
    correct = [x == 1 for x in v]
    for n, k in CASES_NK:
        grad = orc.grad_pass_at_k(p, correct, k)
        assert grad == orc.grad_max_at_k(p, v, k)  # Pass@k is Max@k on 0/1 rewards
        assert orc.expected_gradient(p, v, n, lambda r, k=k: orc.rspo_sum_form(r, k)) == grad
        for method in ("rspo", "rspo_passk", "pkpo") + (("pkpo_loo",) if n >= k + 1 else ()):
            assert _maxdiff(orc.expected_gradient(p, v, n, _lib(method, k)), grad) < 1e-10, method


def test_rloo_unbiased_for_expected_reward() -> None:
    p, v = CONTINUOUS[1]
    grad = orc.grad_max_at_k(p, v, 1)  # Max@1 = E[r]
    for n in (2, 3, 5):
        assert orc.expected_gradient(p, v, n, lambda r: [a / len(r) for a in orc.rloo_mean_form(r)]) == grad
        assert _maxdiff(orc.expected_gradient(p, v, n, _lib("rloo", 1)), grad) < 1e-10


def _cosine(a: Sequence[Fraction], b: Sequence[Fraction]) -> float:
    dot = sum(float(x) * float(y) for x, y in zip(a, b, strict=True))
    na = math.sqrt(sum(float(x) ** 2 for x in a))
    nb = math.sqrt(sum(float(y) ** 2 for y in b))
    return dot / (na * nb)


def test_grpo_and_passk_training_are_biased() -> None:
    """Their expected gradient differs from grad Pass@k, and not by one common factor.

    With 0/1 rewards every estimator's expectation is parallel to grad P(correct) within one prompt,
    so the bias shows as a prompt-dependent scale: a batch mixing an easy and a hard prompt gets
    a gradient that is not proportional to grad of the mean Pass@k. RSPO's scale is exactly 1.
    """
    records = []
    for n, k in [(4, 2), (6, 3), (6, 2), (5, 4)]:
        scales: dict[str, list[float]] = {"grpo": [], "passk_training": [], "rspo": []}
        for p, v in BINARY:
            grad = orc.grad_pass_at_k(p, [x == 1 for x in v], k)
            norm2 = sum(float(g) ** 2 for g in grad)
            for method in scales:
                e = orc.expected_gradient(p, v, n, _lib(method, k))
                scale = sum(float(x) * float(g) for x, g in zip(e, grad, strict=True)) / norm2
                scales[method].append(scale)
                bias = _maxdiff(e, grad)
                records.append({"method": method, "n": n, "k": k, "max_abs_bias": bias, "scale": scale})
                if method == "rspo":
                    assert bias < 1e-10
                else:
                    assert bias > 1e-3, (method, n, k)
        assert scales["rspo"] == pytest.approx([1.0, 1.0], abs=1e-10)
        for method in ("grpo", "passk_training"):
            if n < k + 2:  # with n = k + 1 every informative group has c = 1: one sigma, one scale
                continue
            lo, hi = min(scales[method]), max(scales[method])
            assert hi / lo > 1.01, (method, n, k, scales[method])
    # With graded rewards GRPO's expectation is not even parallel to grad Max@k.
    for p, v in CONTINUOUS:
        grad = orc.grad_max_at_k(p, v, 3)
        e = orc.expected_gradient(p, v, 4, _lib("grpo", 3))
        cos = _cosine(e, grad)
        records.append({"method": "grpo", "n": 4, "k": 3, "max_abs_bias": _maxdiff(e, grad), "cosine": cos})
        assert cos < 1 - 1e-6
    print(json.dumps(records, indent=1))


def test_library_output_is_a_function_of_the_group_only() -> None:
    """Sanity: the expectation machinery uses the same ordering the library returns."""
    a = compute_advantages(torch.tensor([[1.0, 0.0, 1.0]]), 2, "rspo")[0]
    assert a[0] == a[2] and a[1] == 0
