"""Per-response group weights for Pass@k / Max@k policy gradients (and risk-neutral comparators).

Convention: every method returns **mean-form** advantages A (B, n), float64, such that the
policy-gradient estimate for one prompt group is

    g = (1/n) * sum_i A_i * grad log pi(y_i | x)        (log pi = sum of the response's token logprobs)

The paper's **sum form** coefficient is c_i = A_i / n (g = sum_i c_i grad log pi(y_i)). Mixing the
two silently rescales the learning rate by n. `policy_loss(mode="sequence")` averages A_i * log pi
over all N = B * n responses, i.e. it averages the per-group estimates over groups.

Methods (registry `METHODS`, keyed by name):

- ``rspo``            Max@k, any real rewards (increment form). Unbiased for grad Max@k; equals
                      ``rspo_passk`` on 0/1 rewards. A_i = n * c_i with
                      c_i = (1/C(n,k)) * sum_{k-subsets K containing i} (max_K r - max_{K minus i} r),
                      where the max of the empty set is 0 (so k = 1 gives plain REINFORCE A_i = r_i).
- ``rspo_passk``      Pass@k, 0/1 rewards only: A_i = k * r_i * C(n-c, k-1) / C(n-1, k-1).
- ``pkpo``            PKPO s (Walder & Karkhanis), no baseline: c_i = (k/n) * mean of the subset max
                      over k-subsets containing i. Unbiased, but credits hitchhikers (high variance).
- ``pkpo_loo``        PKPO s^(loo): c_i - k * rho_{-i} / (n-1), rho_{-i} the Max@k estimate of the
                      other n-1 responses. Unbiased; needs n >= k + 1.
- ``passk_training``  Chen et al. (arXiv 2508.10751) analytic advantages, 0/1 rewards only, divided by
                      the per-prompt sigma = sqrt(Rbar (1 - Rbar)) + eps (eps default 0; a group with
                      sigma = 0 gets A = 0). Biased.
- ``grpo``            (r_i - mean r) / (population std r + eps), eps default 1e-6 (0/0 -> 0).
                      Risk-neutral and biased for Pass@k.
- ``rloo``            r_i - mean_{j != i} r_j: the unbiased risk-neutral (k = 1) reference. Needs n >= 2.

Properties of ``rspo`` (exact, k >= 2): A >= 0, non-decreasing in reward, tied rewards get identical
weights whatever the sort order, invariant to adding a constant, equivariant to scaling, all-equal
rewards give exactly 0, n = k credits only a unique best (by best minus second best). At k = 1 it is
plain REINFORCE with no baseline (pair it with a baseline, or use ``rloo``, if k = 1 is trained).

Variable group sizes: pass a list of rows of different lengths (returned padded with 0 on the
right) or a rectangular (B, n) array plus a bool ``mask``; each group uses its own size, and
non-member entries get A = 0. Every group needs at least k members (``pkpo_loo``: k + 1; ``rloo``:
2); smaller groups raise ValueError rather than being silently clamped.

Numerics: float64; binomials only as ratios (`binom_ratio_table`), increment form for Max@k;
vectorised over groups (one sort along dim 1, cumulative sums); O(n log n) per group; no
overflow for n up to 4096 and any k <= n.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from rspo_core.combinatorics import binom_ratio_table
from rspo_core.groups import RewardsLike, group_size_batches, scatter_groups, to_reward_batch

__all__ = ["METHODS", "AdvantageMethod", "advantage_methods", "compute_advantages"]

# fn(rewards (G, n) float64, k, eps) -> mean-form advantages (G, n) float64; inputs already validated.
MethodFn = Callable[[torch.Tensor, int, float], torch.Tensor]


@dataclass(frozen=True)
class AdvantageMethod:
    """One registry entry: the estimator and what it needs."""

    name: str
    fn: MethodFn
    summary: str
    objective: str  # what E[g] equals: "grad Max@k", "grad Pass@k", "grad E[r]" or "biased"
    binary_only: bool = False
    extra_samples: int = 0  # the group needs n >= k + extra_samples
    min_n: int = 1
    uses_eps: bool = False
    default_eps: float = 0.0


def _sort_rows(r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.sort(r, dim=1)  # values (G, n) ascending, indices (G, n)


def _unsort(sorted_vals: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(sorted_vals).scatter_(1, idx, sorted_vals)  # (G, n) in input order


def _rspo_maxk(r: torch.Tensor, k: int, eps: float) -> torch.Tensor:
    n = r.shape[1]
    if k == 1:  # the increment sum telescopes to r_i (max of the empty set = 0): return it exactly
        return r.clone()
    rs, idx = _sort_rows(r)  # (G, n) ascending
    d = torch.empty_like(rs)  # increments r_(l) - r_(l-1), with r_(0) = 0 (only weighted when k = 1)
    d[:, 0] = rs[:, 0]
    torch.sub(rs[:, 1:], rs[:, :-1], out=d[:, 1:])
    # A_(i) = n * c_(i) = k * sum_{l <= i} C(l-1, k-1) / C(n-1, k-1) * d_l   (n / C(n,k) = k / C(n-1,k-1))
    w = binom_ratio_table(n - 1, k - 1, device=r.device).mul_(k)  # (n,) w[l-1] for l = 1..n
    a_sorted = torch.cumsum(d.mul_(w), dim=1)  # (G, n)
    return _unsort(a_sorted, idx)


def _rspo_passk(r: torch.Tensor, k: int, eps: float) -> torch.Tensor:
    n = r.shape[1]
    c = r.sum(dim=1).round().long()  # (G,) number correct
    table = binom_ratio_table(n - 1, k - 1, device=r.device)  # (n,) C(a, k-1) / C(n-1, k-1)
    ratio = table[(n - c).clamp(max=n - 1)]  # (G,) C(n-c, k-1)/C(n-1, k-1); c = 0 rows are all-zero anyway
    return k * r * ratio.unsqueeze(1)  # (G, n)


def _pkpo_s(r: torch.Tensor, k: int, eps: float) -> torch.Tensor:
    n = r.shape[1]
    rs, idx = _sort_rows(r)  # (G, n) ascending; rank i (1-based) is column i-1
    # mean over k-subsets containing rank i of the subset max
    #   = [C(i-1, k-1) r_(i) + sum_{j > i} C(j-2, k-2) r_(j)] / C(n-1, k-1)
    own = binom_ratio_table(n - 1, k - 1, device=r.device) * rs  # (G, n)
    if k >= 2:
        # C(j-2, k-2) / C(n-1, k-1) = (k-1)/(n-1) * C(j-2, k-2)/C(n-2, k-2), j = 2..n
        t2 = binom_ratio_table(n - 2, k - 2, device=r.device) * ((k - 1) / (n - 1))  # (n-1,)
        u = t2 * rs[:, 1:]  # (G, n-1): term of rank j = 2..n
        suffix = torch.flip(torch.cumsum(torch.flip(u, dims=[1]), dim=1), dims=[1])  # (G, n-1) sum_{j' >= j}
        own[:, :-1] += suffix  # rank i gets sum over j > i
    return _unsort(k * own, idx)  # mean form: n * (k/n) * mean


def _pkpo_loo(r: torch.Tensor, k: int, eps: float) -> torch.Tensor:
    n = r.shape[1]
    s = _pkpo_s(r, k, eps)  # (G, n) mean form
    rs, idx = _sort_rows(r)
    # rho_{-i}: Max@k estimate of the other n-1: sum_{j=1..n-1} C(j-1,k-1)/C(n-1,k) * r'_(j), where
    # r' drops rank i (ranks above i shift down by one). C(j-1,k-1)/C(n-1,k) = k/(n-k) * t1[j-1].
    t1 = binom_ratio_table(n - 1, k - 1, device=r.device)  # (n,)
    below = t1 * rs  # (G, n): rank j < i keeps weight t1[j-1]
    pre = torch.cumsum(below, dim=1) - below  # (G, n) exclusive prefix  (sum_{j < i})
    above = t1[:-1] * rs[:, 1:]  # (G, n-1): rank j > i uses weight t1[j-2]
    suf = torch.zeros_like(rs)
    suf[:, :-1] = torch.flip(torch.cumsum(torch.flip(above, dims=[1]), dim=1), dims=[1])
    rho = (pre + suf) * (k / (n - k))  # (G, n) sorted order
    return s - _unsort(rho, idx) * (n * k / (n - 1))


def _passk_training(r: torch.Tensor, k: int, eps: float) -> torch.Tensor:
    n = r.shape[1]
    n_neg = n - r.sum(dim=1).round().long()  # (G,)
    rbar = 1.0 - binom_ratio_table(n, k, device=r.device)[n_neg]  # (G,) 1 - C(N_neg,k)/C(N,k)
    t1 = binom_ratio_table(n - 1, k - 1, device=r.device)  # (n,)
    # q = C(N_neg-1, k-1) / C(N-1, k-1), 0 when N_neg = 0
    q = torch.where(n_neg >= 1, t1[(n_neg - 1).clamp(min=0)], torch.zeros_like(rbar))
    sigma = (rbar * (1.0 - rbar)).clamp_min(0.0).sqrt() + eps  # (G,)
    a_pos = (1.0 - rbar) / sigma
    a_neg = (1.0 - rbar - q) / sigma
    adv = torch.where(r > 0.5, a_pos.unsqueeze(1), a_neg.unsqueeze(1))  # (G, n)
    return torch.where((sigma > 0).unsqueeze(1), adv, torch.zeros_like(adv))


def _grpo(r: torch.Tensor, k: int, eps: float) -> torch.Tensor:
    mean = r.mean(dim=1, keepdim=True)  # (G, 1)
    std = r.std(dim=1, unbiased=False, keepdim=True)  # (G, 1) population std
    centred = r - mean
    denom = std + eps
    return torch.where(denom > 0, centred / torch.where(denom > 0, denom, 1.0), torch.zeros_like(r))


def _rloo(r: torch.Tensor, k: int, eps: float) -> torch.Tensor:
    n = r.shape[1]
    return (r - r.mean(dim=1, keepdim=True)) * (n / (n - 1))  # = r_i - mean_{j != i} r_j


METHODS: dict[str, AdvantageMethod] = {
    m.name: m
    for m in (
        AdvantageMethod("rspo", _rspo_maxk, "RSPO Max@k increment form, any real rewards", "grad Max@k"),
        AdvantageMethod(
            "rspo_passk", _rspo_passk, "RSPO Pass@k closed form, 0/1 rewards", "grad Pass@k", binary_only=True
        ),
        AdvantageMethod("pkpo", _pkpo_s, "PKPO s (no baseline)", "grad Max@k"),
        AdvantageMethod("pkpo_loo", _pkpo_loo, "PKPO s^(loo)", "grad Max@k", extra_samples=1, min_n=2),
        AdvantageMethod(
            "passk_training",
            _passk_training,
            "Pass@k Training (Chen et al.) analytic, per-prompt sigma",
            "biased",
            binary_only=True,
            uses_eps=True,
            default_eps=0.0,
        ),
        AdvantageMethod("grpo", _grpo, "GRPO (population std)", "biased", uses_eps=True, default_eps=1e-6),
        AdvantageMethod("rloo", _rloo, "leave-one-out mean baseline", "grad E[r]", min_n=2),
    )
}


def advantage_methods() -> list[str]:
    """Names accepted by `compute_advantages(method=...)`, in registry order."""
    return list(METHODS)


def _lookup(method: str) -> AdvantageMethod:
    try:
        return METHODS[method]
    except KeyError:
        raise ValueError(f"unknown advantage method {method!r}; choose one of {advantage_methods()}") from None


def compute_advantages(
    rewards: RewardsLike,
    k: int,
    method: str = "rspo",
    *,
    mask: torch.Tensor | np.ndarray | Sequence[Sequence[bool]] | None = None,
    eps: float | None = None,
) -> torch.Tensor:
    """Mean-form advantages A (B, n) float64 for B prompt groups of n responses each.

    Args:
        rewards: (B, n) tensor / array / nested sequence (1-D = one group), or a list of rows of
            different lengths (returned right-padded with zeros to the longest row).
        k: the Pass@k / Max@k target, 1 <= k <= n for every group (ignored by ``grpo``/``rloo``
            beyond that check).
        method: a name in `METHODS` (see the module docstring).
        mask: optional (B, n) bool, True = member of the group. Non-members get A = 0 and each
            group uses its own size. Not combinable with ragged rows.
        eps: denominator epsilon for ``grpo`` (default 1e-6) and ``passk_training`` (default 0);
            other methods reject it.

    Returns:
        A with g_b = (1/n_b) * sum_i A[b, i] * grad log pi(y_{b,i}); sum form is A / n_b.

    Raises:
        ValueError: unknown method, k < 1, a group smaller than the method needs, NaN/inf member
            rewards, non-binary rewards for a binary-only method, or eps for a method without one.
    """
    spec = _lookup(method)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be an integer >= 1 (the Pass@k / Max@k target), got {k!r}")
    k = int(k)
    if eps is not None and not spec.uses_eps:
        users = [m.name for m in METHODS.values() if m.uses_eps]
        raise ValueError(f"eps applies only to {users}; method {method!r} has no denominator, drop eps")
    if eps is not None and (not np.isfinite(eps) or eps < 0):
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    eps_v = spec.default_eps if eps is None else float(eps)

    r, m = to_reward_batch(rewards, mask)  # (B, n) float64, (B, n) bool | None
    if spec.binary_only:
        members = r if m is None else r[m]
        if not bool(((members == 0) | (members == 1)).all()):
            raise ValueError(
                f"method {method!r} needs 0/1 rewards (it assumes Pass@k); use method='rspo' (Max@k form) "
                "for partial credit or penalties"
            )
    out = torch.zeros_like(r)  # (B, n)
    need = max(k + spec.extra_samples, spec.min_n)
    for n, rows, values in group_size_batches(r, m):
        if n < need:
            where = "every group" if rows is None else f"group(s) {rows[:10].tolist()}"
            raise ValueError(
                f"method {method!r} with k={k} needs at least {need} responses per group, but {where} "
                f"has n={n}: sample more responses per prompt, lower k, or drop those groups"
            )
        if values.shape[0] == 0:
            continue
        scatter_groups(out, m, rows, spec.fn(values, k, eps_v))
    return out
