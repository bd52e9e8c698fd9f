"""Held-out evaluation: unbiased Pass@k and Max@k from n samples per prompt.

Generates `eval.n` samples for each of `task.num_eval` held-out prompts with a
backend, scores them with the task family's reference scorer (in process), and
reports the unbiased estimators from `rspo_core` (never "max of the first k").
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

import rspo_core
from services.common.config import RspoConfig
from services.rollout.backends.base import GenerationBackend, SamplingSettings, make_backend
from services.tasks import make_task


def evaluate(backend: GenerationBackend, cfg: RspoConfig, *, seed: int = 1234) -> dict[str, Any]:
    task = make_task(cfg.task)
    size = task.size("eval")
    count = min(cfg.task.num_eval, size) if size else cfg.task.num_eval
    examples = [task.example(i, "eval") for i in range(count)]
    settings = SamplingSettings.from_model_config(cfg.model, seed=seed)
    rewards: list[list[float]] = []
    t0 = time.monotonic()
    bp = cfg.eval.batch_prompts
    for start in range(0, len(examples), bp):
        chunk = examples[start : start + bp]
        gens = backend.generate([backend.encode(e.prompt) for e in chunk], cfg.eval.n, settings)
        for ex, samples in zip(chunk, gens):
            rewards.append([task.score(ex.prompt, ex.reference, g.text) for g in samples])
    table = torch.tensor(rewards, dtype=torch.float64)  # (P, n)
    binary = bool(((table == 0) | (table == 1)).all())
    out: dict[str, Any] = {
        "prompts": len(examples),
        "n": cfg.eval.n,
        "reward_mean": float(table.mean()),
        "max_at_k": {str(k): float(rspo_core.max_at_k(table, k).mean()) for k in cfg.eval.ks},
        "binary": binary,
        "wall_s": round(time.monotonic() - t0, 3),
        "policy_version": backend.policy_version,
    }
    # A response "passes" when it earns full credit (reward >= 1); on 0/1 rewards this is plain Pass@k.
    correct = (table >= 1.0).sum(dim=1)
    out["pass_at_k"] = {str(k): float(rspo_core.pass_at_k(cfg.eval.n, correct, k).mean()) for k in cfg.eval.ks}
    return out


def evaluate_weights(cfg: RspoConfig, state: dict[str, Any] | None, version: int) -> dict[str, Any]:
    """Evaluate the initial model (`state` None) or the given weights with the transformers backend."""
    backend = make_backend(cfg.model, "transformers", Path(cfg.run.run_dir) / "model")
    if state is not None:
        backend.load_state_dict(state, version)
    return evaluate(backend, cfg)
