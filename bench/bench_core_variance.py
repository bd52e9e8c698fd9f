"""Per-group gradient standard deviation of rspo vs pkpo vs grpo (and pkpo_loo, rloo) by Monte Carlo.

Tied continuous example: a softmax policy over 5 outcomes, two pairs of which share a reward.
For each of G = 40,000 groups of n draws, g = sum_i c_i * grad_logits log pi(y_i) (c = A / n).
We report the mean of g (vs the exact grad Max@k), the per-component standard deviation across
groups, and its norm. Run: .venv/bin/python bench/bench_core_variance.py
"""

from __future__ import annotations

import math
from typing import Any

import benchlib as common
import torch

from rspo_core import compute_advantages

P = torch.tensor([0.30, 0.25, 0.20, 0.15, 0.10], dtype=torch.float64)
V = torch.tensor([0.0, 0.5, 0.5, 1.0, 1.0], dtype=torch.float64)  # ties: {0.5, 0.5}, {1.0, 1.0}
N, K, G = 8, 4, 40_000


def exact_grad_max_at_k(p: torch.Tensor, v: torch.Tensor, k: int) -> torch.Tensor:
    """d Max@k / d logits: dMax/dp_j = k E[max(v_j, M_{k-1})], then the softmax Jacobian."""
    vals = sorted(set(v.tolist()))
    cdf = {u: float(p[v <= u].sum()) for u in vals}
    dist = []  # P(M_{k-1} = u)
    prev = 0.0
    for u in vals:
        dist.append((u, cdf[u] ** (k - 1) - prev))
        prev = cdf[u] ** (k - 1)
    dp = torch.tensor([k * sum(w * max(float(vj), u) for u, w in dist) for vj in v], dtype=torch.float64)
    return p * (dp - (p * dp).sum())


def main() -> None:
    g = torch.Generator().manual_seed(0)
    y = torch.multinomial(P.expand(G, -1), N, replacement=True, generator=g)  # (G, n) outcome ids
    r = V[y]  # (G, n)
    onehot_sum = lambda c: torch.zeros(G, len(P), dtype=torch.float64).scatter_add_(1, y, c)  # noqa: E731
    exact = exact_grad_max_at_k(P, V, K)
    rows: dict[str, dict[str, Any]] = {}
    for method in ("rspo", "pkpo", "pkpo_loo", "grpo", "rloo"):
        a = compute_advantages(r, K, method)  # (G, n) mean form
        c = a / N  # sum form
        grads = onehot_sum(c) - c.sum(dim=1, keepdim=True) * P  # (G, m): sum_i c_i (e_{y_i} - p)
        mean = grads.mean(dim=0)
        std = grads.std(dim=0)
        cos = float(mean @ exact / (mean.norm() * exact.norm()))
        rows[method] = {
            "std_norm": float(std.norm()),
            "std_per_logit": std.tolist(),
            "mean_grad": mean.tolist(),
            "mean_minus_exact_norm": float((mean - exact).norm()),
            "mc_stderr_norm": float(std.norm() / math.sqrt(G)),
            "cosine_to_exact": cos,
            "relative_std": float(std.norm() / mean.norm()),
        }
    base = rows["rspo"]["std_norm"]
    md = [
        "## Per-group gradient standard deviation (tied continuous example)\n",
        f"p = {P.tolist()}, rewards = {V.tolist()}, n = {N}, k = {K}, {G:,} groups.",
        f"Exact grad Max@k wrt logits = {[round(x, 5) for x in exact.tolist()]}.\n",
        "| method | std norm | std / rspo std | ‖mean − exact‖ (MC s.e.) | cosine(mean, exact) | std / ‖mean‖ |",
        "|---|---|---|---|---|---|",
    ]
    for m, row in rows.items():
        md.append(
            f"| {m} | {row['std_norm']:.4f} | {row['std_norm'] / base:.2f}x | "
            f"{row['mean_minus_exact_norm']:.4f} ({row['mc_stderr_norm']:.4f}) | {row['cosine_to_exact']:.4f} | "
            f"{row['relative_std']:.2f} |"
        )
    md.append(
        "\ngrpo and rloo target a different (risk-neutral) objective, so their mean is not grad Max@k; "
        "the scale-free column std/‖mean‖ compares noise relative to signal."
    )
    text = "\n".join(md)
    print(text)
    common.write_results(
        "core_variance", {"p": P.tolist(), "rewards": V.tolist(), "n": N, "k": K, "groups": G,
                          "exact_grad": exact.tolist(), "methods": rows}, text
    )  # fmt: skip


if __name__ == "__main__":
    main()
