"""Reward-group input handling: one place that turns user input into (B, n) float64 + mask.

Accepted `rewards`:
- a (B, n) tensor / numpy array / rectangular nested sequence (every group has n members), or
- a list of rows of different lengths (ragged): rows are right-padded with 0 to the longest row
  and a (B, n_max) bool mask marks the real members (`pad_groups`).

A separate `mask` (B, n) bool may be given with rectangular input: False entries are not
members of the group (their reward is ignored, even if NaN) and each group uses its own size
n_b = mask[b].sum(). Estimators are computed per group with that group's actual size
(ALGORITHMS.md pitfall 6): complete or drop whole groups upstream, never pass part of one.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

__all__ = ["RewardsLike", "group_size_batches", "pad_groups", "to_reward_batch"]

RewardsLike = torch.Tensor | np.ndarray | Sequence[Sequence[float]] | Sequence[float]


def pad_groups(rows: Sequence[Sequence[float]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad ragged rows: returns rewards (B, n_max) float64 (pads are 0) and mask (B, n_max) bool."""
    lengths = [len(row) for row in rows]
    n_max = max(lengths, default=0)
    rewards = torch.zeros(len(rows), n_max, dtype=torch.float64)  # (B, n_max)
    mask = torch.zeros(len(rows), n_max, dtype=torch.bool)  # (B, n_max)
    for b, row in enumerate(rows):
        if lengths[b]:
            rewards[b, : lengths[b]] = torch.as_tensor([float(x) for x in row], dtype=torch.float64)
            mask[b, : lengths[b]] = True
    return rewards, mask


def _is_ragged(rewards: object) -> bool:
    if isinstance(rewards, (torch.Tensor, np.ndarray)) or not isinstance(rewards, Sequence):
        return False
    if len(rewards) == 0 or not all(isinstance(row, Sequence) for row in rewards):
        return False
    return len({len(row) for row in rewards}) > 1  # type: ignore[arg-type]


def to_reward_batch(
    rewards: RewardsLike, mask: torch.Tensor | np.ndarray | Sequence[Sequence[bool]] | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Convert to rewards (B, n) float64 and an optional mask (B, n) bool; validates finiteness.

    1-D input is one group (B = 1). Returns mask=None when every entry is a member.
    Raises ValueError on NaN/inf member rewards, on a mask of the wrong shape, and on a mask
    combined with ragged rows.
    """
    if _is_ragged(rewards):
        if mask is not None:
            raise ValueError(
                "rewards is a list of rows of different lengths and a mask was also given: pass either "
                "ragged rows (the mask is built for you) or a rectangular (B, n) array plus mask"
            )
        r, m = pad_groups(rewards)  # type: ignore[arg-type]
        mask_t: torch.Tensor | None = m
    else:
        if isinstance(rewards, torch.Tensor):
            r = rewards.detach().to(torch.float64)
        else:  # python floats must not pass through float32
            r = torch.from_numpy(np.asarray(rewards, dtype=np.float64))
        if r.dim() == 1:
            r = r.unsqueeze(0)
        if r.dim() != 2:
            raise ValueError(
                f"rewards must be (B, n) (one row per prompt group) or 1-D for one group, got shape "
                f"{tuple(r.shape)}; reshape to (num_groups, group_size)"
            )
        if mask is None:
            mask_t = None
        else:
            mask_t = torch.as_tensor(mask, device=r.device).to(torch.bool)
            if mask_t.dim() == 1 and r.shape[0] == 1:
                mask_t = mask_t.unsqueeze(0)
            if mask_t.shape != r.shape:
                raise ValueError(
                    f"mask shape {tuple(mask_t.shape)} differs from rewards shape {tuple(r.shape)}; "
                    "pass a bool mask with one entry per reward"
                )
            if bool(mask_t.all()):
                mask_t = None
    members = r if mask_t is None else r[mask_t]
    if not bool(torch.isfinite(members).all()):
        bad = ~torch.isfinite(r) if mask_t is None else (~torch.isfinite(r)) & mask_t
        rows = torch.nonzero(bad.any(dim=1)).flatten().tolist()[:10]
        raise ValueError(
            f"rewards contain NaN or inf in group(s) {rows}: fix the reward function or drop those whole "
            "groups (or mask the entries out) before computing advantages"
        )
    return r, mask_t


def group_size_batches(
    rewards: torch.Tensor, mask: torch.Tensor | None
) -> Iterator[tuple[int, torch.Tensor | None, torch.Tensor]]:
    """Yield (n, rows, values) per distinct group size: rows are row indices (None = all rows)
    and values (R, n) the member rewards of those rows in their original order.

    With no mask this yields once (the whole batch); otherwise once per distinct size, so the
    work is vectorised over groups of equal size (no Python loop over groups).
    """
    if mask is None:
        yield rewards.shape[1], None, rewards
        return
    sizes = mask.sum(dim=1)  # (B,)
    for n in torch.unique(sizes).tolist():
        rows = torch.nonzero(sizes == n).flatten()  # (R,)
        sub_mask = mask[rows]  # (R, n_max)
        values = rewards[rows][sub_mask].view(len(rows), int(n))  # (R, n) row-major keeps member order
        yield int(n), rows, values


def scatter_groups(
    out: torch.Tensor, mask: torch.Tensor | None, rows: torch.Tensor | None, values: torch.Tensor
) -> None:
    """Inverse of `group_size_batches`: write values (R, n) into out (B, n_max) at member positions."""
    if rows is None or mask is None:
        out.copy_(values)
        return
    sub_mask = mask[rows]  # (R, n_max)
    block = torch.zeros(len(rows), out.shape[1], dtype=out.dtype, device=out.device)  # (R, n_max)
    block[sub_mask] = values.reshape(-1)
    out[rows] = block
