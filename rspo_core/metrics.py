"""Unbiased Pass@k / Max@k value estimators, for evaluation and logging.

- ``pass_at_k(n, c, k)`` = 1 - C(n-c, k) / C(n, k) (Chen et al. 2021), computed as the stable
  product prod_{j=0..min(c,k)-1} (1 - max(c,k) / (n-j)) in float64; exactly 1 when n - c < k.
- ``max_at_k(rewards, k)`` = sum_{i=k..n} C(i-1, k-1) / C(n, k) * r_(i) over ascending order
  statistics: the mean over all k-subsets of the subset max (never "max of the first k samples").

Both need n >= k >= 1 and raise ValueError otherwise.
"""

from __future__ import annotations

import numpy as np
import torch

from rspo_core.combinatorics import binom_ratio_table
from rspo_core.groups import RewardsLike, to_reward_batch

__all__ = ["max_at_k", "pass_at_k"]

IntLike = int | np.integer | torch.Tensor | np.ndarray


def _as_long(x: IntLike, name: str) -> torch.Tensor:
    t = torch.as_tensor(x)
    if t.is_floating_point():
        if not bool((t == t.round()).all()):
            raise ValueError(f"{name} must hold integers (counts), got {x!r}")
        t = t.round()
    return t.to(torch.int64)


def pass_at_k(n: IntLike, c: IntLike, k: IntLike) -> torch.Tensor:
    """Unbiased pass@k estimate from n samples of which c are correct; float64.

    n, c, k: ints or integer tensors/arrays, broadcast together (e.g. n (B,), c (B,), k int).
    Returns a tensor of the broadcast shape (0-d for scalar inputs; use ``float(...)``).
    Raises ValueError unless 1 <= k <= n and 0 <= c <= n elementwise.
    """
    n_t, c_t, k_t = torch.broadcast_tensors(_as_long(n, "n"), _as_long(c, "c"), _as_long(k, "k"))
    if bool((k_t < 1).any()):
        raise ValueError(f"k must be >= 1, got {k!r}")
    if bool((n_t < k_t).any()):
        raise ValueError(f"pass@k needs n >= k samples (n={n!r}, k={k!r}): sample more or lower k")
    if bool(((c_t < 0) | (c_t > n_t)).any()):
        raise ValueError(f"c (number correct) must lie in [0, n], got c={c!r}, n={n!r}")
    terms = torch.minimum(c_t, k_t)  # product length per element
    top = torch.maximum(c_t, k_t).to(torch.float64)
    length = int(terms.max()) if terms.numel() else 0
    j = torch.arange(length, dtype=torch.float64)  # (L,)
    denom = n_t.to(torch.float64).unsqueeze(-1) - j  # (..., L)
    factors = (1.0 - top.unsqueeze(-1) / denom.clamp_min(1.0)).clamp_min(0.0)  # (..., L)
    factors = torch.where(j < terms.unsqueeze(-1), factors, torch.ones_like(factors))
    return 1.0 - factors.prod(dim=-1)


def max_at_k(rewards: RewardsLike, k: int) -> torch.Tensor:
    """Unbiased Max@k estimate: (B, n) rewards -> (B,) float64; 1-D (n,) -> 0-d tensor.

    Raises ValueError if k < 1, n < k, or rewards contain NaN/inf.
    """
    one_group = isinstance(rewards, (torch.Tensor, np.ndarray)) and np.ndim(rewards) == 1
    if not isinstance(rewards, (torch.Tensor, np.ndarray)) and len(rewards) and not hasattr(rewards[0], "__len__"):
        one_group = True
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    r, mask = to_reward_batch(rewards)
    if mask is not None:
        raise ValueError("max_at_k needs groups of equal size; call it once per group size")
    n = r.shape[1]
    if n < k:
        raise ValueError(f"Max@k needs n >= k samples per group (n={n}, k={k}): sample more or lower k")
    rs, _ = torch.sort(r, dim=1)  # (B, n) ascending
    w = binom_ratio_table(n - 1, int(k) - 1, device=r.device) * (int(k) / n)  # (n,) C(i-1,k-1)/C(n,k)
    out = (rs * w).sum(dim=1)  # (B,)
    return out[0] if one_group else out
