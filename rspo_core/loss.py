"""The policy-gradient loss: a pure function `policy_loss(inputs, config) -> PolicyLossOutput`.

Shapes: N responses (all groups of the batch flattened, N = B * n), T tokens (right-padded).

Let lp = current token logprobs, old = logprobs recorded at generation, A = mean-form advantages
(`compute_advantages`), m = response mask, L_i = sum_t m * lp (the sequence log-probability).
Masked tokens are removed with `torch.where`, so their values (even -inf/NaN) affect nothing.

Modes (``PolicyLossConfig.mode``):

- ``"sequence"``, clip_eps None: **exact REINFORCE**, loss = -(1/N) sum_i A_i * L_i, so
  grad = (1/N) sum_i A_i grad log pi(y_i) = the mean over groups of sum_i c_i grad log pi(y_i)
  (c = A / n). This is the unbiased on-policy form; ``old_logprobs`` are only used for metrics.
- ``"sequence"``, clip_eps set: PPO clipped surrogate on the *sequence* ratio
  rho_i = exp(sum_t m (lp - old)): loss = -(1/N) sum_i min(rho_i A_i, clip(rho_i, 1-eps, 1+eps) A_i).
  At rho = 1 its gradient equals REINFORCE's; where clipped (A > 0 and rho > 1+eps, or A < 0 and
  rho < 1-eps) the response contributes no gradient. (No ratio cap: very off-policy negative
  samples give large gradients, as in plain PPO.)
- ``"token_sum"``: per-token terms A_i * lp_t (or the clipped per-token ratio surrogate),
  summed over tokens and divided by N. Without clipping this equals ``"sequence"`` exactly.
- ``"token_mean"``: the same per-token terms divided by the number of unmasked tokens in the
  batch (DAPO-style). This re-weights responses by length: **not** the unbiased Pass@k gradient.

Options that change the effective objective (ALGORITHMS.md pitfall 7): clipping/ratios (off-policy
correction, biased when it binds), token_mean, KL, and advantage scaling (a scalar: rescales the
step size only).

- ``kl_coef > 0``: adds kl_coef * KL estimate to ``ref_logprobs`` using the k3 estimator per token,
  exp(ref - lp) - (ref - lp) - 1 (>= 0), aggregated like the policy term (per-response sum / N for
  "sequence"/"token_sum", per-token mean for "token_mean").
- ``advantage_scale="batch_std"``: divides every advantage by ONE batch scalar (population std of
  A over the batch, + 1e-8), never per prompt (per-prompt std turns RSPO back into GRPO). The
  multiplier used is reported as metrics["advantage_scale"].

Metrics (floats): loss, pg_loss, kl_loss, ratio_mean/min/max (sequence ratios in "sequence" mode,
unmasked per-token ratios otherwise), clip_fraction (share of those ratios in the clipped region,
0 without clipping), kl_old_new (mean over unmasked tokens of old - lp: a k1 estimate of
KL(pi_old || pi), ~0 on-policy), kl_ref (k3, per-token mean, when ref_logprobs are given),
adv_mean/adv_std/adv_abs_max (after scaling), advantage_scale, tokens, sequences.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

__all__ = ["PolicyLossConfig", "PolicyLossInputs", "PolicyLossOutput", "policy_loss"]

LossMode = Literal["sequence", "token_mean", "token_sum"]
_MODES = ("sequence", "token_mean", "token_sum")
_SCALES = ("none", "batch_std")


@dataclass(frozen=True)
class PolicyLossInputs:
    """Tensors for one loss evaluation (N responses, T tokens)."""

    logprobs: torch.Tensor  # (N, T) current policy token logprobs, requires grad
    old_logprobs: torch.Tensor  # (N, T) logprobs recorded at generation (no grad)
    advantages: torch.Tensor  # (N,) mean-form advantages (compute_advantages(...).flatten())
    mask: torch.Tensor  # (N, T) bool or 0/1: True for response tokens
    ref_logprobs: torch.Tensor | None = None  # (N, T) reference policy, needed when kl_coef > 0

    def __post_init__(self) -> None:
        n_t = tuple(self.logprobs.shape)
        if self.logprobs.dim() != 2:
            raise ValueError(f"logprobs must be (N, T), got shape {n_t}")
        for name in ("old_logprobs", "mask") + (("ref_logprobs",) if self.ref_logprobs is not None else ()):
            shape = tuple(getattr(self, name).shape)
            if shape != n_t:
                raise ValueError(f"{name} shape {shape} must equal logprobs shape {n_t}")
        if tuple(self.advantages.shape) != (n_t[0],):
            raise ValueError(
                f"advantages must be (N,) = ({n_t[0]},), got {tuple(self.advantages.shape)}; "
                "flatten the (B, n) advantages in the same order as the responses"
            )


@dataclass(frozen=True)
class PolicyLossConfig:
    """Mirrors services.common.config.LossConfig (mode, clip_eps, kl_coef, advantage_scale)."""

    mode: LossMode = "sequence"
    clip_eps: float | None = None  # None: no importance ratio (exact on-policy REINFORCE)
    kl_coef: float = 0.0  # k3 KL penalty to ref_logprobs; 0 = off
    advantage_scale: Literal["none", "batch_std"] = "none"

    def __post_init__(self) -> None:
        if self.mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, got {self.mode!r}")
        if self.clip_eps is not None and not self.clip_eps > 0:
            raise ValueError(
                f"clip_eps must be > 0 (e.g. 0.2) or None for the exact on-policy form, got {self.clip_eps}"
            )
        if not self.kl_coef >= 0:
            raise ValueError(f"kl_coef must be >= 0 (0 disables the KL penalty), got {self.kl_coef}")
        if self.advantage_scale not in _SCALES:
            raise ValueError(
                f"advantage_scale must be one of {_SCALES} (never per-prompt std), got {self.advantage_scale!r}"
            )


@dataclass(frozen=True)
class PolicyLossOutput:
    loss: torch.Tensor  # () scalar, differentiable w.r.t. inputs.logprobs
    metrics: dict[str, float]


def _clipped_surrogate(ratio: torch.Tensor, adv: torch.Tensor, clip_eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Elementwise min(ratio*A, clip(ratio)*A) and the bool 'clipped' region (zero gradient)."""
    clipped_ratio = ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps)
    surrogate = torch.minimum(ratio * adv, clipped_ratio * adv)
    clipped = ((adv > 0) & (ratio > 1.0 + clip_eps)) | ((adv < 0) & (ratio < 1.0 - clip_eps))
    return surrogate, clipped


def policy_loss(inputs: PolicyLossInputs, config: PolicyLossConfig) -> PolicyLossOutput:
    """Scalar loss (minimise it) and metrics; see the module docstring for the exact forms."""
    lp = inputs.logprobs  # (N, T)
    mask = inputs.mask.to(torch.bool)  # (N, T)
    n_seq = lp.shape[0]
    zeros = torch.zeros((), dtype=lp.dtype, device=lp.device)
    lp_m = torch.where(mask, lp, zeros)  # (N, T) masked tokens removed (value and gradient)
    old_m = torch.where(mask, inputs.old_logprobs.to(lp.dtype), zeros)  # (N, T)
    tokens = int(mask.sum())

    adv = inputs.advantages.detach().to(lp.dtype)  # (N,)
    scale = 1.0
    if config.advantage_scale == "batch_std":
        scale = 1.0 / (float(adv.double().std(unbiased=False)) + 1e-8)
        adv = adv * scale

    if config.mode == "sequence":
        log_ratio = (lp_m - old_m).sum(dim=1)  # (N,)
        ratio = torch.exp(log_ratio)  # (N,) sequence importance ratio
        if config.clip_eps is None:
            pg_terms = adv * lp_m.sum(dim=1)  # (N,) exact REINFORCE
            clipped = torch.zeros_like(adv, dtype=torch.bool)
        else:
            pg_terms, clipped = _clipped_surrogate(ratio, adv, config.clip_eps)
        pg_loss = -pg_terms.sum() / max(n_seq, 1)
        ratio_stats = ratio.detach()
    else:
        adv_t = adv.unsqueeze(1).expand_as(lp_m)  # (N, T)
        ratio_tok = torch.exp(lp_m - old_m)  # (N, T), 1 at masked tokens
        if config.clip_eps is None:
            pg_tok = adv_t * lp_m
            clipped_tok = torch.zeros_like(mask)
        else:
            pg_tok, clipped_tok = _clipped_surrogate(ratio_tok, adv_t, config.clip_eps)
        pg_tok = torch.where(mask, pg_tok, zeros)
        denom = max(tokens, 1) if config.mode == "token_mean" else max(n_seq, 1)
        pg_loss = -pg_tok.sum() / denom
        ratio_stats = ratio_tok.detach()[mask]
        clipped = clipped_tok[mask]

    kl_ref_mean = None
    kl_loss = zeros
    if inputs.ref_logprobs is not None:
        delta = torch.where(mask, inputs.ref_logprobs.to(lp.dtype), zeros) - lp_m  # (N, T), 0 at masked
        kl_tok = torch.exp(delta) - delta - 1.0  # (N, T) k3 estimator, exactly 0 at masked tokens
        kl_ref_mean = float(kl_tok.detach().sum()) / max(tokens, 1)
        if config.kl_coef > 0:
            denom = max(tokens, 1) if config.mode == "token_mean" else max(n_seq, 1)
            kl_loss = config.kl_coef * kl_tok.sum() / denom
    elif config.kl_coef > 0:
        raise ValueError(
            "kl_coef > 0 needs inputs.ref_logprobs (reference policy logprobs); pass them or set kl_coef=0"
        )

    loss = pg_loss + kl_loss
    with torch.no_grad():
        adv_d = adv.double()
        metrics: dict[str, float] = {
            "loss": loss.item(),
            "pg_loss": pg_loss.item(),
            "kl_loss": kl_loss.item(),
            "ratio_mean": float(ratio_stats.mean()) if ratio_stats.numel() else 1.0,
            "ratio_min": float(ratio_stats.min()) if ratio_stats.numel() else 1.0,
            "ratio_max": float(ratio_stats.max()) if ratio_stats.numel() else 1.0,
            "clip_fraction": float(clipped.double().mean()) if clipped.numel() else 0.0,
            "kl_old_new": float((old_m - lp_m.detach()).sum()) / max(tokens, 1),
            "adv_mean": float(adv_d.mean()) if n_seq else 0.0,
            "adv_std": float(adv_d.std(unbiased=False)) if n_seq else 0.0,
            "adv_abs_max": float(adv_d.abs().max()) if n_seq else 0.0,
            "advantage_scale": scale,
            "tokens": float(tokens),
            "sequences": float(n_seq),
        }
        if kl_ref_mean is not None:
            metrics["kl_ref"] = kl_ref_mean
    return PolicyLossOutput(loss=loss, metrics=metrics)
