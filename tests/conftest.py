"""Shared fixtures: a real throwaway Redis server per test, and small fast run configs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.common.config import RspoConfig, load_config, with_overrides
from services.common.redis_server import EmbeddedRedis

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A real redis-server process on a free port (append-only persistence on, so it can be restarted)."""
    server = EmbeddedRedis(tmp_path / "redis", persist=True).start()
    try:
        yield server
    finally:
        server.cleanup()


def small_config(run_dir: Path, redis_url: str, **overrides: Any) -> RspoConfig:
    """The quickstart config shrunk for tests: few steps, small groups, ports picked by the OS."""
    cfg = load_config(ROOT / "configs" / "quickstart.yaml", env={})
    base: dict[str, Any] = {
        "run.run_dir": str(run_dir),
        "redis.url": redis_url,
        "redis.block_ms": 200,
        "redis.claim_idle_s": 2.0,
        "task.n": 8,
        "task.k": 4,
        "task.num_eval": 16,
        "learner.total_steps": 4,
        "learner.groups_per_step": 2,
        "learner.port": 0,
        "reward.port": 0,
        "rollout.port": 0,
        "eval.n": 8,
        "eval.ks": [1, 4, 8],
    }
    base.update(overrides)
    return with_overrides(cfg, base)
