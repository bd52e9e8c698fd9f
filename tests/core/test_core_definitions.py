"""Every method equals its brute-force definition (exact Fractions, all k-subsets) on random groups."""

from __future__ import annotations

import random
from fractions import Fraction

import core_oracles as orc
import pytest
import torch

from rspo_core import compute_advantages, max_at_k, pass_at_k

TOL = 1e-12


def _groups(seed: int, count: int, kind: str) -> list[list[Fraction]]:
    """Random groups, n in 1..10; rewards are dyadic rationals so float input is exact."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        n = rng.randint(1, 10)
        if kind == "binary":
            out.append([Fraction(rng.randint(0, 1)) for _ in range(n)])
        elif kind == "ties":  # few distinct values, many ties, negatives
            pool = [Fraction(rng.randint(-8, 8), 4) for _ in range(rng.randint(1, 3))]
            out.append([rng.choice(pool) for _ in range(n)])
        else:  # continuous-ish, negatives
            out.append([Fraction(rng.randint(-64, 64), 16) for _ in range(n)])
    return out


def _lib_sum_form(r: list[Fraction], k: int, method: str, **kw: float) -> list[float]:
    a = compute_advantages(torch.tensor([[float(x) for x in r]], dtype=torch.float64), k, method, **kw)
    return (a[0] / len(r)).tolist()


def _assert_close(got: list[float], want: list[Fraction] | list[float], scale: float) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert abs(g - float(w)) <= TOL * max(1.0, scale), (got, [float(x) for x in want])


GROUPS = {kind: _groups(seed, 120, kind) for seed, kind in enumerate(("binary", "ties", "continuous"))}


@pytest.mark.parametrize("kind", ["binary", "ties", "continuous"])
def test_rspo_and_pkpo_match_subset_definitions(kind: str) -> None:
    checked = 0
    for r in GROUPS[kind]:
        n = len(r)
        scale = float(max(abs(x) for x in r))
        for k in range(1, n + 1):
            _assert_close(_lib_sum_form(r, k, "rspo"), orc.rspo_sum_form(r, k), scale)
            _assert_close(_lib_sum_form(r, k, "pkpo"), orc.pkpo_sum_form(r, k), scale)
            if n >= k + 1:
                _assert_close(_lib_sum_form(r, k, "pkpo_loo"), orc.pkpo_loo_sum_form(r, k), scale)
            got_max = float(max_at_k([float(x) for x in r], k))
            assert abs(got_max - float(orc.max_at_k_def(r, k))) <= TOL * max(1.0, scale)
            checked += 1
    assert checked > 300


def test_binary_methods_match_definitions() -> None:
    for r in GROUPS["binary"]:
        n = len(r)
        c = sum(1 for x in r if x == 1)
        for k in range(1, n + 1):
            want = orc.rspo_sum_form(r, k)
            _assert_close(_lib_sum_form(r, k, "rspo_passk"), want, 1.0)
            # rspo (Max@k form) reduces to the Pass@k form on 0/1 rewards
            _assert_close(_lib_sum_form(r, k, "rspo"), want, 1.0)
            ptc = orc.passk_training_mean_form(r, k, 0.0)
            _assert_close([x * n for x in _lib_sum_form(r, k, "passk_training")], ptc, 10.0)
            ptc_eps = orc.passk_training_mean_form(r, k, 1e-6)
            _assert_close([x * n for x in _lib_sum_form(r, k, "passk_training", eps=1e-6)], ptc_eps, 10.0)
            assert abs(float(pass_at_k(n, c, k)) - float(orc.max_at_k_def(r, k))) <= TOL


@pytest.mark.parametrize("kind", ["binary", "ties", "continuous"])
def test_grpo_and_rloo_match_definitions(kind: str) -> None:
    for r in GROUPS[kind]:
        n = len(r)
        scale = float(max(abs(x) for x in r))
        for eps in (1e-6, 0.0, 0.1):
            got = [x * n for x in _lib_sum_form(r, 1, "grpo", eps=eps)]
            _assert_close(got, orc.grpo_mean_form(r, eps), 1e3 * scale)
        if n >= 2:
            _assert_close([x * n for x in _lib_sum_form(r, 1, "rloo")], orc.rloo_mean_form(r), scale)


def test_public_vectors_binary() -> None:
    r = [1, 0, 0, 1, 0, 0, 0, 0]
    n, k = 8, 4
    assert float(pass_at_k(8, 2, 4)) == pytest.approx(11 / 14, abs=1e-15)
    f = Fraction
    expect_sum = {
        "rspo": [f(2, 7), 0, 0, f(2, 7), 0, 0, 0, 0],
        "rspo_passk": [f(2, 7), 0, 0, f(2, 7), 0, 0, 0, 0],
        "pkpo": [f(1, 2), f(5, 14), f(5, 14), f(1, 2), f(5, 14), f(5, 14), f(5, 14), f(5, 14)],
        "pkpo_loo": [f(17, 98)] + [f(-13, 98)] * 2 + [f(17, 98)] + [f(-13, 98)] * 4,
    }
    for method, want in expect_sum.items():
        a = compute_advantages(r, k, method)[0]
        assert a.dtype == torch.float64 and a.shape == (n,)
        _assert_close((a / n).tolist(), [Fraction(x) for x in want], 1.0)
    assert compute_advantages(r, k, "rspo")[0].tolist() == pytest.approx([16 / 7, 0, 0, 16 / 7, 0, 0, 0, 0])
    ptc = compute_advantages(r, k, "passk_training")[0].tolist()
    assert ptc[0] == pytest.approx(0.522233, abs=1e-6) and ptc[1] == pytest.approx(-0.174078, abs=1e-6)


def test_public_vectors_continuous() -> None:
    r = [0.9, 0.1, 0.5, 0.5, 0.0, 0.3, 0.7, 0.2]
    f = Fraction
    assert float(max_at_k(r, 4)) == pytest.approx(132 / 175, abs=1e-14)
    rspo = [f(17, 100), 0, f(9, 700), f(9, 700), 0, f(1, 700), f(7, 100), 0]
    pkpo = [f(9, 20), f(253, 700), f(51, 140), f(51, 140), f(253, 700), f(253, 700), f(11, 28), f(253, 700)]
    _assert_close((compute_advantages(r, 4, "rspo")[0] / 8).tolist(), [Fraction(x) for x in rspo], 1.0)
    _assert_close((compute_advantages(r, 4, "pkpo")[0] / 8).tolist(), [Fraction(x) for x in pkpo], 1.0)
    # the oracle agrees with the published vectors too (decimal inputs as exact fractions)
    exact = [Fraction(str(x)) for x in r]
    assert orc.rspo_sum_form(exact, 4) == [Fraction(x) for x in rspo]
    assert orc.pkpo_sum_form(exact, 4) == [Fraction(x) for x in pkpo]
    assert orc.max_at_k_def(exact, 4) == Fraction(132, 175)
