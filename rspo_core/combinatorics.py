"""Binomial-coefficient ratios in float64, without overflow.

Every estimator in `rspo_core` needs ratios such as C(a, j) / C(m, j), never the binomials
themselves: C(4096, 2048) overflows float64, while the ratio is a product of factors in [0, 1]
and can only underflow (to exactly 0, which is the right limit).

The table is built from the recurrence C(a - 1, j) / C(a, j) = (a - j) / a, accumulated from
the top (a = m, ratio 1) downwards by a reversed cumulative product: O(m), relative error about
m * 2**-53, no lgamma cancellation.
"""

from __future__ import annotations

import math

import torch

__all__ = ["binom_ratio_table", "comb"]


def comb(a: int, b: int) -> int:
    """Exact integer C(a, b), 0 when b < 0 or b > a (the convention of ALGORITHMS.md)."""
    if b < 0 or a < 0 or b > a:
        return 0
    return math.comb(a, b)


def binom_ratio_table(m: int, j: int, *, device: torch.device | str | None = None) -> torch.Tensor:
    """Ratios C(a, j) / C(m, j) for a = 0..m, as a float64 tensor of shape (m + 1,).

    Entries with a < j are exactly 0 and the last entry is exactly 1. Needs 0 <= j <= m.
    """
    if j < 0 or m < 0 or j > m:
        raise ValueError(f"binom_ratio_table needs 0 <= j <= m, got m={m}, j={j}")
    a = torch.arange(1, m + 1, dtype=torch.float64, device=device)  # (m,) values 1..m
    # factor[a-1] = C(a-1, j) / C(a, j) = (a - j) / a; clamped so entries below j stay exactly 0.
    factors = ((a - j) / a).clamp_min(0.0)  # (m,)
    # table[a] = prod_{b = a+1..m} (b - j) / b, table[m] = 1.
    rev = torch.cumprod(torch.flip(factors, dims=[0]), dim=0)  # (m,) table[m-1], table[m-2], ..., table[0]
    ones = torch.ones(1, dtype=torch.float64, device=device)
    return torch.cat([torch.flip(rev, dims=[0]), ones])  # (m + 1,)
