"""One learner update: advantages from rspo_core, the policy loss, backward, optimizer step.

`train_step` owns exactly one step and nothing else (no queues, no files). The
worker loop decides when to call it and what to do with the metrics it returns.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

import rspo_core
from services.common.codec import TrainBatch
from services.common.config import LearnerConfig
from services.rollout.backends.base import sampling_logprobs


def token_logprobs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    temperature: float,
    top_p: float = 1.0,
) -> torch.Tensor:
    """log pi(token_{t+1} | tokens_{<=t}) under the distribution rollout sampled from.

    Uses the backends' own `sampling_logprobs` (temperature, top-p), so on-policy ratios are
    exactly 1 up to float error. input_ids, attention_mask: (N, L). Returns (N, L-1) float32.
    """
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1, :]  # (N, L-1, V)
    targets = input_ids[:, 1:].unsqueeze(-1)  # (N, L-1, 1)
    return sampling_logprobs(logits, temperature, top_p).gather(-1, targets).squeeze(-1)


def group_advantages(rewards: Sequence[Sequence[float]], ks: Sequence[int], method: str) -> torch.Tensor:
    """Mean-form advantages for every sample, flattened in group order: (N,) float32.

    Groups are bucketed by (n, k) so each bucket is one vectorised rspo_core call with
    that group's actual n (pitfall 6: weights are always computed per whole group).
    """
    out: list[torch.Tensor | None] = [None] * len(rewards)
    buckets: dict[tuple[int, int], list[int]] = {}
    for i, (row, k) in enumerate(zip(rewards, ks)):
        buckets.setdefault((len(row), k), []).append(i)
    for (_n, k), idx in buckets.items():
        table = torch.tensor([list(rewards[i]) for i in idx], dtype=torch.float64)  # (b, n)
        adv = rspo_core.compute_advantages(table, k, method)
        for j, i in enumerate(idx):
            out[i] = adv[j]
    return torch.cat([t for t in out if t is not None]).float()


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: TrainBatch,
    cfg: LearnerConfig,
    *,
    temperature: float,
    top_p: float,
    device: torch.device,
    ref_model: torch.nn.Module | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> dict[str, float]:
    """Apply one RSPO (or comparator) update on `batch`; returns metrics (nothing is logged here).

    `autocast_dtype` (e.g. bfloat16 on GPU) runs the forward passes in that precision over float32
    master weights; log-probabilities and the loss are always computed in float32.
    """
    advantages = group_advantages(batch.rewards, batch.ks, cfg.method).to(device)  # (N,)
    input_ids = batch.input_ids.to(device)
    attention = batch.attention_mask.to(device)
    model.train()
    amp = torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None)
    with amp:
        logprobs = token_logprobs(model, input_ids, attention, temperature, top_p)  # (N, L-1)
        ref_logprobs = None
        if ref_model is not None and cfg.loss.kl_coef > 0:
            with torch.no_grad():
                ref_logprobs = token_logprobs(ref_model, input_ids, attention, temperature, top_p)
    out = rspo_core.policy_loss(
        rspo_core.PolicyLossInputs(
            logprobs=logprobs,
            old_logprobs=batch.old_logprobs.to(device),
            advantages=advantages,
            mask=batch.response_mask.to(device),
            ref_logprobs=ref_logprobs,
        ),
        rspo_core.PolicyLossConfig(
            mode=cfg.loss.mode,
            clip_eps=cfg.loss.clip_eps,
            kl_coef=cfg.loss.kl_coef,
            advantage_scale=cfg.loss.advantage_scale,
        ),
    )
    optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    max_norm = cfg.grad_clip if cfg.grad_clip is not None else math.inf
    grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm))
    optimizer.step()
    metrics = {f"loss/{k}": float(v) for k, v in out.metrics.items()}
    metrics["grad_norm"] = grad_norm
    metrics["reward_mean"] = float(sum(sum(r) for r in batch.rewards) / sum(batch.group_sizes))
    return metrics
