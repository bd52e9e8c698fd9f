"""Independent oracles for the rspo_core tests: the *definitions*, by exact enumeration.

Nothing here re-types a closed form from rspo_core: RSPO / PKPO / Max@k come from enumerating
k-subsets (itertools.combinations) in exact Fractions; GRPO / RLOO / Pass@k Training from their
textbook definitions; gradients of Pass@k / Max@k from the polynomial in the outcome probabilities.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from fractions import Fraction

Vec = list[Fraction]


def _max(values: Sequence[Fraction]) -> Fraction:
    """Max of a subset; the max of the empty set is 0 (so RSPO at k = 1 is plain REINFORCE)."""
    return max(values) if values else Fraction(0)


def rspo_sum_form(r: Sequence[Fraction], k: int) -> Vec:
    """c_i = (1/C(n,k)) * sum over k-subsets K containing i of (max_K r - max_{K minus i} r)."""
    n = len(r)
    acc = [Fraction(0)] * n
    for subset in itertools.combinations(range(n), k):
        top = _max([r[j] for j in subset])
        for i in subset:
            acc[i] += top - _max([r[j] for j in subset if j != i])
    total = math.comb(n, k)
    return [a / total for a in acc]


def max_at_k_def(r: Sequence[Fraction], k: int) -> Fraction:
    """Mean over all k-subsets of the subset max."""
    subsets = list(itertools.combinations(range(len(r)), k))
    return sum((_max([r[j] for j in s]) for s in subsets), Fraction(0)) / len(subsets)


def pkpo_sum_form(r: Sequence[Fraction], k: int) -> Vec:
    """c_i = (k/n) * mean over k-subsets containing i of the subset max."""
    n = len(r)
    acc = [Fraction(0)] * n
    count = [0] * n
    for subset in itertools.combinations(range(n), k):
        top = _max([r[j] for j in subset])
        for i in subset:
            acc[i] += top
            count[i] += 1
    return [Fraction(k, n) * a / c for a, c in zip(acc, count, strict=True)]


def pkpo_loo_sum_form(r: Sequence[Fraction], k: int) -> Vec:
    """c_i - k * rho_{-i} / (n-1), rho_{-i} = Max@k estimate of the other n - 1 (subset means)."""
    n = len(r)
    s = pkpo_sum_form(r, k)
    return [s[i] - Fraction(k, n - 1) * max_at_k_def([r[j] for j in range(n) if j != i], k) for i in range(n)]


def rloo_mean_form(r: Sequence[Fraction]) -> Vec:
    n = len(r)
    return [r[i] - sum((r[j] for j in range(n) if j != i), Fraction(0)) / (n - 1) for i in range(n)]


def grpo_mean_form(r: Sequence[Fraction], eps: float) -> list[float]:
    n = len(r)
    mean = sum(r, Fraction(0)) / n
    var = sum(((x - mean) ** 2 for x in r), Fraction(0)) / n
    denom = math.sqrt(var) + eps
    return [float(x - mean) / denom if denom > 0 else 0.0 for x in r]


def passk_training_mean_form(r: Sequence[Fraction], k: int, eps: float) -> list[float]:
    """Chen et al. analytic advantages (binary), with the group-level Pass@k from subset maxima."""
    n = len(r)
    n_neg = sum(1 for x in r if x == 0)
    rbar = max_at_k_def(r, k)  # = 1 - C(N_neg, k)/C(N, k) by definition of the group Pass@k
    sigma = math.sqrt(rbar * (1 - rbar)) + eps
    if sigma == 0:
        return [0.0] * n
    q = Fraction(math.comb(n_neg - 1, k - 1), math.comb(n - 1, k - 1)) if n_neg >= 1 else Fraction(0)
    return [float(1 - rbar) / sigma if x == 1 else float(1 - rbar - q) / sigma for x in r]


# ---------------------------------------------------------------- exact policy-gradient machinery


def count_vectors(n: int, m: int) -> Iterator[tuple[int, ...]]:
    """All (c_1..c_m) with c_j >= 0 and sum c_j = n."""
    for bars in itertools.combinations(range(n + m - 1), m - 1):
        prev = -1
        counts = []
        for b in (*bars, n + m - 1):
            counts.append(b - prev - 1)
            prev = b
        yield tuple(counts)


def multinomial_prob(counts: Sequence[int], p: Sequence[Fraction]) -> Fraction:
    coef = math.factorial(sum(counts))
    for c in counts:
        coef //= math.factorial(c)
    out = Fraction(coef)
    for c, pj in zip(counts, p, strict=True):
        out *= pj**c
    return out


def softmax_chain(p: Sequence[Fraction], grad_p: Sequence[Fraction]) -> Vec:
    """d f / d logits_l = p_l * (df/dp_l - sum_j p_j df/dp_j) for p = softmax(logits)."""
    inner = sum((pj * gj for pj, gj in zip(p, grad_p, strict=True)), Fraction(0))
    return [pl * (gl - inner) for pl, gl in zip(p, grad_p, strict=True)]


def grad_max_at_k(p: Sequence[Fraction], values: Sequence[Fraction], k: int) -> Vec:
    """Analytic gradient wrt the logits of Max@k(p) = sum over k-tuples prod p * max.

    d/dp_j of that symmetric polynomial = k * E[max(v_j, max of k-1 fresh draws)].
    """
    m = len(p)
    dp = []
    for j in range(m):
        e = Fraction(0)
        for counts in count_vectors(k - 1, m):
            drawn = [values[t] for t in range(m) if counts[t] > 0]
            e += multinomial_prob(counts, p) * max([values[j], *drawn])
        dp.append(k * e)
    return softmax_chain(p, dp)


def grad_pass_at_k(p: Sequence[Fraction], correct: Sequence[bool], k: int) -> Vec:
    """Analytic gradient wrt the logits of Pass@k = 1 - (1 - q)^k, q = P(correct)."""
    q = sum((pj for pj, c in zip(p, correct, strict=True) if c), Fraction(0))
    dp = [k * (1 - q) ** (k - 1) if c else Fraction(0) for c in correct]
    return softmax_chain(p, dp)


def expected_gradient(
    p: Sequence[Fraction],
    values: Sequence[Fraction],
    n: int,
    sum_form: Callable[[list[Fraction]], Sequence[Fraction]],
) -> Vec:
    """E over n i.i.d. draws of sum_i c_i * grad_logits log pi(y_i), grad log pi(y) = e_y - p (exact)."""
    m = len(p)
    out = [Fraction(0)] * m
    for counts in count_vectors(n, m):
        outcomes = [t for t in range(m) for _ in range(counts[t])]
        c = sum_form([values[t] for t in outcomes])
        w = multinomial_prob(counts, p)
        for ci, y in zip(c, outcomes, strict=True):
            for ell in range(m):
                out[ell] += w * ci * ((1 if ell == y else 0) - p[ell])
    return out
