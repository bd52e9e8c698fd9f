"""Fixtures for tests that run services as real processes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from services.common.config import RspoConfig, with_overrides
from services.common.redis_server import free_port
from tests.integration.procs import Processes


@pytest.fixture
def procs() -> Iterator[Processes]:
    p = Processes()
    try:
        yield p
    finally:
        p.stop_all()


def ported(cfg: RspoConfig) -> RspoConfig:
    """Fixed free ports (subprocesses must know each other's addresses before they start)."""
    ports = {name: free_port() for name in ("reward", "learner", "rollout")}
    return with_overrides(
        cfg,
        {
            "reward.port": ports["reward"],
            "learner.port": ports["learner"],
            "rollout.port": ports["rollout"],
            "rollout.reward_address": f"127.0.0.1:{ports['reward']}",
            "rollout.learner_address": f"127.0.0.1:{ports['learner']}",
        },
    )
