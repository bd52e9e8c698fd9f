"""Learner checkpoints: model, optimizer, counters, dataset cursor and applied group ids.

Layout: RUN_DIR/checkpoints/step-000042/{model.pt, optimizer.pt, state.json} and
RUN_DIR/checkpoints/LATEST naming the newest complete one. A checkpoint is written
into a temporary folder, fsynced and renamed, and LATEST is replaced last: a
crash at any point leaves the previous checkpoint intact and readable.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch


@dataclass
class LearnerState:
    step: int = 0
    # Version 1 is the initial policy; every step publishes the next one.
    policy_version: int = 1
    groups_applied: int = 0
    groups_dropped: int = 0
    groups_duplicate: int = 0
    # Ids of groups applied or counted as dropped: a redelivered group with one of these ids is
    # acknowledged and skipped, so a crash never applies (or counts) a group twice.
    resolved_ids: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(
    root: Path, state: LearnerState, model: torch.nn.Module, optimizer: torch.optim.Optimizer, keep: int
) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{state.step:06d}"
    tmp = root / f".tmp-step-{state.step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    torch.save(model.state_dict(), tmp / "model.pt")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps(state.to_json()))
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    _fsync_dir(root)
    latest_tmp = root / ".LATEST.tmp"
    latest_tmp.write_text(final.name)
    latest_tmp.replace(root / "LATEST")  # the marker goes last: readers never see a half checkpoint
    _prune(root, keep)
    return final


def _prune(root: Path, keep: int) -> None:
    done = sorted(p for p in root.glob("step-*") if p.is_dir())
    for old in done[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(root: Path) -> Path | None:
    marker = root / "LATEST"
    if not marker.is_file():
        return None
    path = root / marker.read_text().strip()
    return path if (path / "state.json").is_file() else None


def load_checkpoint(
    path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None, device: torch.device
) -> LearnerState:
    model.load_state_dict(torch.load(path / "model.pt", map_location=device, weights_only=True))
    if optimizer is not None:
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location=device, weights_only=True))
    return LearnerState(**json.loads((path / "state.json").read_text()))


def load_model_weights(path: Path) -> dict[str, torch.Tensor]:
    """Just the model tensors of a checkpoint (for eval), on CPU."""
    state: dict[str, torch.Tensor] = torch.load(path / "model.pt", map_location="cpu", weights_only=True)
    return state
