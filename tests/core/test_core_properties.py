"""Reference properties, large-n numerics, variable-size groups, metrics and error messages."""

from __future__ import annotations

import math
import random
from fractions import Fraction

import numpy as np
import pytest
import torch

from rspo_core import METHODS, advantage_methods, compute_advantages, max_at_k, pad_groups, pass_at_k


def _rand_groups(seed: int, b: int, n: int, distinct: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if distinct:
        return torch.randint(-distinct, distinct + 1, (b, n), generator=g).to(torch.float64) / 4
    return torch.randn(b, n, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("n", [2, 5, 16, 64])
def test_rspo_nonnegative_monotone_and_tie_exact(n: int) -> None:
    r = _rand_groups(n, 200, n, distinct=3)  # many ties, negatives
    for k in range(2, n + 1, max(1, n // 6)):
        a = compute_advantages(r, k, "rspo")
        assert bool((a >= 0).all())
        order = torch.argsort(r, dim=1)
        assert bool((torch.diff(torch.gather(a, 1, order), dim=1) >= 0).all())  # non-decreasing in reward
        same = r.unsqueeze(2) == r.unsqueeze(1)  # (B, n, n) tied pairs get identical weights, exactly
        assert bool(((a.unsqueeze(2) == a.unsqueeze(1)) | ~same).all())
        perm = torch.randperm(n)
        assert torch.equal(compute_advantages(r[:, perm], k, "rspo"), a[:, perm])  # any input order


def test_shift_invariance_scale_equivariance_all_equal() -> None:
    r = _rand_groups(1, 300, 9)
    for k in range(2, 10):
        a = compute_advantages(r, k, "rspo")
        torch.testing.assert_close(compute_advantages(r + 3.25, k, "rspo"), a, rtol=0, atol=1e-12)
        torch.testing.assert_close(compute_advantages(r * 2.5, k, "rspo"), 2.5 * a, rtol=1e-12, atol=1e-12)
        const = torch.full((4, 9), -1.7, dtype=torch.float64)
        assert torch.equal(compute_advantages(const, k, "rspo"), torch.zeros_like(const))


def test_k1_is_plain_reinforce_and_n_equals_k_credits_unique_best() -> None:
    r = _rand_groups(2, 50, 7)
    assert torch.equal(compute_advantages(r, 1, "rspo"), r)
    torch.testing.assert_close(compute_advantages((r > 0).double(), 1, "rspo_passk"), (r > 0).double())
    n = 6
    r = torch.tensor([[0.1, 0.7, 0.3, 0.9, 0.2, 0.0], [1.0, 0.5, 1.0, 0.2, 0.0, 0.3]], dtype=torch.float64)
    a = compute_advantages(r, n, "rspo")
    want = torch.zeros_like(r)
    want[0, 3] = n * (0.9 - 0.7)  # mean form of best minus second best
    torch.testing.assert_close(a, want, atol=1e-12, rtol=0)  # tied best: nobody gets credit


def test_rspo_equals_passk_form_on_binary() -> None:
    r = (_rand_groups(3, 500, 12) > 0.8).double()
    for k in (1, 2, 5, 12):
        torch.testing.assert_close(
            compute_advantages(r, k, "rspo"), compute_advantages(r, k, "rspo_passk"), rtol=1e-13, atol=1e-13
        )


def test_large_n_numerics_exact_against_integers() -> None:
    n = 4096
    r = torch.zeros(3, n, dtype=torch.float64)
    r[0, :5] = 1.0
    r[1, :1000] = 1.0
    r[2, :] = torch.rand(n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for k in (2, 7, 2048, 4095, 4096):
        for method in ("rspo", "pkpo", "passk_training", "grpo") + (("pkpo_loo",) if k < n else ()):
            rows = r if method != "passk_training" else r[:2]
            a = compute_advantages(rows, k, method)
            assert bool(torch.isfinite(a).all()), (method, k)
        a = compute_advantages(r[:2], k, "rspo_passk")
        for row, c in ((0, 5), (1, 1000)):
            exact = Fraction(k * math.comb(n - c, k - 1), math.comb(n - 1, k - 1))
            assert a[row, 0].item() == pytest.approx(float(exact), rel=1e-11, abs=1e-300)
            assert float(pass_at_k(n, c, k)) == pytest.approx(
                float(1 - Fraction(math.comb(n - c, k), math.comb(n, k))), rel=1e-12, abs=1e-15
            )
    # Max@k at n = 4096 against exact order-statistic weights
    k = 2048
    vals = sorted(r[2].tolist())
    total = math.comb(n, k)
    exact = sum(Fraction(math.comb(i - 1, k - 1), total) * Fraction(vals[i - 1]) for i in range(k, n + 1))
    assert float(max_at_k(r[2], k)) == pytest.approx(float(exact), rel=1e-11)


def test_vectorised_over_groups_matches_rowwise() -> None:
    r = _rand_groups(4, 64, 10, distinct=4)
    for method in advantage_methods():
        k = 3
        rows = (r > 0).double() if METHODS[method].binary_only else r
        batch = compute_advantages(rows, k, method)
        for b in range(0, 64, 7):
            torch.testing.assert_close(batch[b], compute_advantages(rows[b], k, method)[0], rtol=0, atol=1e-13)


def test_variable_size_groups_ragged_and_mask() -> None:
    rows = [[1.0, 0.0, 0.5], [0.2, 0.9, 0.4, 0.4, 0.0], [0.3, 0.1], [0.6, 0.6, 0.1, 0.8, 0.2]]
    a = compute_advantages(rows, 2, "rspo")
    assert a.shape == (4, 5)
    for b, row in enumerate(rows):
        torch.testing.assert_close(a[b, : len(row)], compute_advantages([row], 2, "rspo")[0])
        assert bool((a[b, len(row) :] == 0).all())
    padded, mask = pad_groups(rows)
    # a scattered mask with NaN at non-members gives the same per-group values
    perm = torch.tensor([4, 0, 3, 1, 2])
    r2, m2 = padded[:, perm].clone(), mask[:, perm]
    r2[~m2] = float("nan")
    a2 = compute_advantages(r2, 2, "rspo", mask=m2)
    torch.testing.assert_close(a2, a[:, perm])
    with pytest.raises(ValueError, match="needs at least 3"):
        compute_advantages(rows, 2, "pkpo_loo")  # the 2-member group is too small


def test_pass_at_k_vectorised_exact_one_and_against_integers() -> None:
    rng = random.Random(0)
    ns = [rng.randint(1, 300) for _ in range(400)]
    ks = [rng.randint(1, n) for n in ns]
    cs = [rng.randint(0, n) for n in ns]
    got = pass_at_k(torch.tensor(ns), torch.tensor(cs), torch.tensor(ks))
    want = [float(1 - Fraction(math.comb(n - c, k), math.comb(n, k))) for n, c, k in zip(ns, cs, ks, strict=True)]
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), rtol=1e-12, atol=1e-15)
    for n, c, k in zip(ns, cs, ks, strict=True):
        if n - c < k:
            assert float(pass_at_k(n, c, k)) == 1.0
    assert float(pass_at_k(10, 0, 3)) == 0.0
    assert pass_at_k(np.array([8, 8]), 2, 4).shape == (2,)


def test_max_at_k_shapes() -> None:
    r = _rand_groups(5, 7, 6)
    assert max_at_k(r, 3).shape == (7,)
    assert max_at_k(r[0], 3).shape == ()
    assert float(max_at_k([0.0, 1.0, 2.0], 3)) == 2.0
    assert float(max_at_k([0.0, 1.0, 2.0], 1)) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: compute_advantages([[1.0, 0.0]], 1, "ppo"), "unknown advantage method .* choose one of"),
        (lambda: compute_advantages([[1.0, 0.0]], 3, "rspo"), "needs at least 3 responses.*lower k"),
        (lambda: compute_advantages([[1.0, 0.0]], 0, "rspo"), "k must be an integer >= 1"),
        (lambda: compute_advantages([[1.0, 0.0]], 1.5, "rspo"), "k must be an integer"),  # type: ignore[arg-type]
        (lambda: compute_advantages([[float("nan"), 0.0]], 1, "rspo"), "NaN or inf.*drop those"),
        (lambda: compute_advantages([[float("inf"), 0.0]], 1, "grpo"), "NaN or inf"),
        (lambda: compute_advantages([[0.5, 0.0]], 1, "rspo_passk"), "0/1 rewards.*method='rspo'"),
        (lambda: compute_advantages([[0.5, 0.0]], 1, "passk_training"), "0/1 rewards"),
        (lambda: compute_advantages([[1.0, 0.0]], 2, "pkpo_loo"), "needs at least 3"),
        (lambda: compute_advantages([[1.0]], 1, "rloo"), "needs at least 2"),
        (lambda: compute_advantages([[1.0, 0.0]], 1, "rspo", eps=0.1), "eps applies only to"),
        (lambda: compute_advantages([[1.0, 0.0]], 1, "grpo", eps=-1.0), "eps must be"),
        (lambda: compute_advantages([[1.0], [1.0, 2.0]], 1, "rspo", mask=[[True]]), "either ragged rows"),
        (lambda: compute_advantages([[1.0, 0.0]], 1, "rspo", mask=[[True]]), "mask shape"),
        (lambda: compute_advantages(torch.zeros(2, 2, 2), 1, "rspo"), "must be \\(B, n\\)"),
        (lambda: pass_at_k(3, 1, 4), "n >= k"),
        (lambda: pass_at_k(3, 4, 2), "c \\(number correct\\)"),
        (lambda: pass_at_k(3, 1, 0), "k must be >= 1"),
        (lambda: max_at_k([1.0, 2.0], 3), "n >= k"),
        (lambda: max_at_k([1.0, float("nan")], 1), "NaN"),
    ],
)
def test_errors_say_what_to_do(call: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()  # type: ignore[operator]


def test_registry_matches_service_config() -> None:
    """The learner's config accepts exactly the registry's methods (contract with services/)."""
    typing = pytest.importorskip("typing")
    config = pytest.importorskip("services.common.config")
    accepted = set(typing.get_args(config.LearnerConfig.model_fields["method"].annotation))
    assert accepted == set(advantage_methods())
    assert advantage_methods() == list(METHODS)
