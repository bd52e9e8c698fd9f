"""rspo_core: the pure math of RSPO (torch, numpy and the standard library only).

Public API:
- `compute_advantages(rewards, k, method="rspo", *, mask=None, eps=None)` -> (B, n) float64
  **mean-form** advantages (sum form c = A / n); `METHODS` registry, `advantage_methods()`.
- `pass_at_k(n, c, k)`, `max_at_k(rewards, k)`: unbiased value estimators.
- `policy_loss(PolicyLossInputs, PolicyLossConfig) -> PolicyLossOutput(loss, metrics)`.
- `pad_groups(rows)`: ragged groups -> (rewards, mask); `binom_ratio_table(m, j)`.

This package knows nothing about models, tokenizers, transports or logging: it returns metrics,
the services log them.
"""

from rspo_core.advantages import METHODS, AdvantageMethod, advantage_methods, compute_advantages
from rspo_core.combinatorics import binom_ratio_table
from rspo_core.groups import RewardsLike, pad_groups
from rspo_core.loss import PolicyLossConfig, PolicyLossInputs, PolicyLossOutput, policy_loss
from rspo_core.metrics import max_at_k, pass_at_k

__all__ = [
    "METHODS",
    "AdvantageMethod",
    "PolicyLossConfig",
    "PolicyLossInputs",
    "PolicyLossOutput",
    "RewardsLike",
    "advantage_methods",
    "binom_ratio_table",
    "compute_advantages",
    "max_at_k",
    "pad_groups",
    "pass_at_k",
    "policy_loss",
]
