"""Learning at equal sample budget: each advantage method trains a small softmax policy.

1. Safe/risky bandit (Max@k, graded rewards): arm "safe" always pays 0.5, arm "risky" pays 1.0
   with probability 0.25 (else 0), three "bad" arms pay 0.1. Risk-neutral methods prefer safe
   (mean 0.5 > 0.25); Max@k (k = 8) prefers mostly-risky (1 - 0.75^8 = 0.90 > 0.5).
2. Contextual Pass@k (binary rewards): 64 prompts, 6 answers, logits = W phi(x) with 3-dim
   features shared by all prompts, one correct answer per prompt: no policy solves every prompt,
   so Pass@k (k = 4) and Pass@1 optimise different trade-offs; prompts vary in difficulty.

Every method gets the same samples per step (groups x n), Adam with the same learning rate,
5 seeds. Objectives are evaluated exactly from the policy (no sampling noise).
Run: .venv/bin/python bench/bench_core_learning.py   (< 3 min on 2 cores)
"""

from __future__ import annotations

import time
from collections.abc import Callable

import benchlib as common
import matplotlib
import torch

from rspo_core import compute_advantages

matplotlib.use("Agg")
import matplotlib.pyplot as plt

SEEDS = 5
STEPS = 300
LR = 0.05
EVAL_EVERY = 5  # curves are sampled every EVAL_EVERY steps


def max_at_k_discrete(probs: torch.Tensor, values: torch.Tensor, k: int) -> float:
    """Exact Max@k of a discrete reward distribution (probs, values) (1-D each)."""
    order = torch.argsort(values)
    v, p = values[order], probs[order]
    cdf = torch.cumsum(p, 0)
    prev = torch.cat([torch.zeros(1, dtype=p.dtype), cdf[:-1]])
    return float((v * (cdf**k - prev**k)).sum())


# ------------------------------------------------------------------------------------- bandit
BANDIT_K, BANDIT_N, BANDIT_GROUPS = 8, 16, 4
ARM_OUTCOMES = [  # per arm: list of (probability, reward)
    [(1.0, 0.5)],  # safe
    [(0.25, 1.0), (0.75, 0.0)],  # risky
    [(1.0, 0.1)],
    [(1.0, 0.1)],
    [(1.0, 0.1)],
]


def bandit_eval(theta: torch.Tensor) -> dict[str, float]:
    pi = torch.softmax(theta.detach(), 0)
    probs, values = [], []
    for a, outs in enumerate(ARM_OUTCOMES):
        for q, v in outs:
            probs.append(float(pi[a]) * q)
            values.append(v)
    p_t, v_t = torch.tensor(probs, dtype=torch.float64), torch.tensor(values, dtype=torch.float64)
    return {
        "max_at_k": max_at_k_discrete(p_t, v_t, BANDIT_K),
        "mean": float((p_t * v_t).sum()),
        "p_risky": float(pi[1]),
    }


def bandit_run(method: str, seed: int) -> list[dict[str, float]]:
    g = torch.Generator().manual_seed(seed)
    theta = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([theta], lr=LR)
    curve = [bandit_eval(theta)]
    for step in range(STEPS):
        pi = torch.softmax(theta, 0)
        arms = torch.multinomial(pi.detach().expand(BANDIT_GROUPS, -1), BANDIT_N, replacement=True, generator=g)
        u = torch.rand(arms.shape, generator=g, dtype=torch.float64)
        rewards = torch.where(arms == 0, 0.5, 0.1).to(torch.float64)
        rewards = torch.where(arms == 1, (u < 0.25).to(torch.float64), rewards)  # (G, n)
        adv = compute_advantages(rewards, BANDIT_K, method)  # (G, n) mean form
        loss = -(adv * torch.log(pi)[arms]).mean()  # = policy_loss(mode="sequence") for one-token responses
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (step + 1) % EVAL_EVERY == 0:
            curve.append(bandit_eval(theta))
    return curve


# ---------------------------------------------------------------------------------- contextual
CTX_PROMPTS, CTX_ARMS, CTX_DIM, CTX_K, CTX_N, CTX_GROUPS = 64, 6, 3, 4, 8, 8


def ctx_problem() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1234)
    feats = torch.randn(CTX_PROMPTS, CTX_DIM, generator=g, dtype=torch.float64)  # (P, d)
    correct = torch.multinomial(torch.tensor([0.35, 0.25, 0.15, 0.1, 0.1, 0.05]), CTX_PROMPTS, True, generator=g)
    return feats, correct


def ctx_eval(w: torch.Tensor, feats: torch.Tensor, correct: torch.Tensor) -> dict[str, float]:
    pi = torch.softmax(feats @ w.detach().T, dim=1)  # (P, A)
    pc = pi.gather(1, correct.unsqueeze(1)).squeeze(1)  # (P,)
    return {"pass_at_k": float((1 - (1 - pc) ** CTX_K).mean()), "pass_at_1": float(pc.mean())}


def ctx_run(method: str, seed: int) -> list[dict[str, float]]:
    feats, correct = ctx_problem()
    g = torch.Generator().manual_seed(seed)
    w = torch.zeros(CTX_ARMS, CTX_DIM, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([w], lr=LR)
    curve = [ctx_eval(w, feats, correct)]
    for step in range(STEPS):
        prompts = torch.randint(0, CTX_PROMPTS, (CTX_GROUPS,), generator=g)  # (G,)
        logp = torch.log_softmax(feats[prompts] @ w.T, dim=1)  # (G, A)
        ans = torch.multinomial(logp.detach().exp(), CTX_N, replacement=True, generator=g)  # (G, n)
        rewards = (ans == correct[prompts].unsqueeze(1)).to(torch.float64)
        adv = compute_advantages(rewards, CTX_K, method)
        loss = -(adv * logp.gather(1, ans)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (step + 1) % EVAL_EVERY == 0:
            curve.append(ctx_eval(w, feats, correct))
    return curve


def average(curves: list[list[dict[str, float]]], key: str) -> list[float]:
    return [sum(c[t][key] for c in curves) / len(curves) for t in range(len(curves[0]))]


def steps_to(curve: list[float], target: float) -> int | None:
    return next((t * EVAL_EVERY for t, v in enumerate(curve) if v >= target), None)


def run_env(
    name: str, runner: Callable[[str, int], list[dict[str, float]]], methods: list[str], keys: list[str]
) -> dict[str, dict[str, list[float]]]:
    out = {}
    for m in methods:
        curves = [runner(m, s) for s in range(SEEDS)]
        out[m] = {key: average(curves, key) for key in keys}
        out[m]["final_spread_" + keys[0]] = [
            min(c[-1][keys[0]] for c in curves),
            max(c[-1][keys[0]] for c in curves),
        ]
        print(f"{name} {m}: final {keys[0]} = {out[m][keys[0]][-1]:.4f}")
    return out


def main() -> None:
    torch.set_num_threads(1)  # tiny tensors: threading overhead dominates
    t0 = time.perf_counter()
    bandit_methods = ["rspo", "pkpo", "pkpo_loo", "grpo", "rloo"]
    ctx_methods = ["rspo", "rspo_passk", "pkpo", "pkpo_loo", "passk_training", "grpo", "rloo"]
    bandit = run_env("bandit", bandit_run, bandit_methods, ["max_at_k", "mean", "p_risky"])
    ctx = run_env("contextual", ctx_run, ctx_methods, ["pass_at_k", "pass_at_1"])
    elapsed = time.perf_counter() - t0

    c_best = max(v["pass_at_k"][-1] for v in ctx.values())
    b_target, c_target = 0.8, round(0.98 * c_best, 3)
    md = [
        "## Learning at equal sample budget",
        f"{SEEDS} seeds, {STEPS} steps, Adam lr {LR}; seed-averaged exact objectives. Wall time {elapsed:.0f} s.\n",
        f"### Safe/risky bandit: Max@{BANDIT_K}, {BANDIT_GROUPS} groups x n={BANDIT_N} per step",
        "(pure risky gives Max@8 = 1 - 0.75^8 = 0.90, a mostly-risky mix slightly more; pure safe gives 0.5)\n",
        f"| method | final Max@{BANDIT_K} (seed min-max) | final mean reward | final P(risky) | "
        f"steps to Max@{BANDIT_K} >= {b_target} |",
        "|---|---|---|---|---|",
    ]
    for m, v in bandit.items():
        lo, hi = v["final_spread_max_at_k"]
        md.append(
            f"| {m} | {v['max_at_k'][-1]:.4f} ({lo:.3f}-{hi:.3f}) | {v['mean'][-1]:.4f} | {v['p_risky'][-1]:.3f} | "
            f"{steps_to(v['max_at_k'], b_target)} |"
        )
    md += [
        f"\n### Contextual Pass@{CTX_K}: {CTX_PROMPTS} prompts, shared 3-dim features, "
        f"{CTX_GROUPS} groups x n={CTX_N} per step\n",
        f"| method | final Pass@{CTX_K} (seed min-max) | final Pass@1 | steps to Pass@{CTX_K} >= {c_target} |",
        "|---|---|---|---|",
    ]
    for m, v in ctx.items():
        lo, hi = v["final_spread_pass_at_k"]
        md.append(
            f"| {m} | {v['pass_at_k'][-1]:.4f} ({lo:.3f}-{hi:.3f}) | {v['pass_at_1'][-1]:.4f} | "
            f"{steps_to(v['pass_at_k'], c_target)} |"
        )
    md.append(
        "\nPlot: `core_learning.png`. `None` = target not reached within the budget; steps are resolved to "
        f"{EVAL_EVERY}. rspo and rspo_passk coincide on 0/1 rewards (same seeds, same samples)."
    )
    text = "\n".join(md)
    print(text)

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for m, v in bandit.items():
        axes[0].plot([t * EVAL_EVERY for t in range(len(v["max_at_k"]))], v["max_at_k"], label=m)
    axes[0].set(title=f"Safe/risky bandit: Max@{BANDIT_K}", xlabel="step", ylabel=f"Max@{BANDIT_K}")
    for m, v in ctx.items():
        axes[1].plot([t * EVAL_EVERY for t in range(len(v["pass_at_k"]))], v["pass_at_k"], label=m)
    axes[1].set(title=f"Contextual: mean Pass@{CTX_K}", xlabel="step", ylabel=f"Pass@{CTX_K}")
    for ax in axes:
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    common.RESULTS.mkdir(parents=True, exist_ok=True)
    fig.savefig(common.RESULTS / "core_learning.png", dpi=110)
    data = {
        "seeds": SEEDS, "steps": STEPS, "lr": LR, "elapsed_s": elapsed,
        "bandit": {"k": BANDIT_K, "n": BANDIT_N, "groups_per_step": BANDIT_GROUPS, "target": b_target,
                   "curves": bandit},
        "contextual": {"k": CTX_K, "n": CTX_N, "groups_per_step": CTX_GROUPS, "prompts": CTX_PROMPTS,
                       "target": c_target, "curves": ctx},
    }  # fmt: skip
    common.write_results("core_learning", data, text)


if __name__ == "__main__":
    main()
