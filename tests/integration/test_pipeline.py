"""The whole system as real processes: reward, learner and rollout on real gRPC ports, a real Redis.

Fault tests kill real processes with SIGKILL (tracked PIDs) and check that no sample group is lost
or applied twice, and that a restarted learner continues from its checkpoint at the right step.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis

from services.common.config import RspoConfig, with_overrides
from services.common.redis_server import EmbeddedRedis, free_port
from services.common.streams import GROUPS_GROUP, TASKS_GROUP, StreamKeys
from tests.conftest import small_config
from tests.integration.conftest import ported
from tests.integration.procs import Blackhole, Processes, learner_status, wait_for

pytestmark = pytest.mark.timeout(300)


def final_state(run_dir: Path) -> dict:  # type: ignore[type-arg]
    latest = (run_dir / "checkpoints" / "LATEST").read_text().strip()
    return json.loads((run_dir / "checkpoints" / latest / "state.json").read_text())  # type: ignore[no-any-return]


def assert_exactly_once(cfg: RspoConfig, run_dir: Path, client: redis.Redis) -> dict:  # type: ignore[type-arg]
    """Every applied group id is distinct and was admitted; the learner's entries are all acked."""
    state = final_state(run_dir)
    total = cfg.learner.total_steps * cfg.learner.groups_per_step
    assert state["step"] == cfg.learner.total_steps
    assert state["groups_applied"] == total
    ids = state["resolved_ids"]
    assert len(ids) == len(set(ids)) == total + state["groups_dropped"]
    admitted = int(client.get(StreamKeys.for_run(cfg).admitted) or 0)
    assert all(0 <= int(i.rsplit("/", 1)[1]) < admitted for i in ids)
    assert client.xpending(StreamKeys.for_run(cfg).groups, GROUPS_GROUP)["pending"] == 0
    return state


def test_full_pipeline_trains_and_applies_each_group_once(
    tmp_path: Path, redis_server: EmbeddedRedis, procs: Processes
) -> None:
    cfg = ported(small_config(tmp_path / "run", redis_server.url, **{"learner.total_steps": 5}))
    for name in ("reward", "learner", "rollout"):
        procs.start(name, cfg, tmp_path)
    for sp in procs.items:
        sp.wait_serving()
    status = wait_for(lambda: (s := learner_status(cfg.rollout.learner_address)).finished and s, 180, "training")
    assert status.step == 5 and status.groups_applied == 10 and status.groups_dropped == 0
    client = redis.Redis.from_url(redis_server.url)
    assert_exactly_once(cfg, tmp_path / "run", client)
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2, 3, 4, 5]
    assert all(m["staleness_max"] <= cfg.learner.max_staleness for m in lines)
    assert client.xlen(StreamKeys.for_run(cfg).dead) == 0
    # Graceful stop: SIGTERM drains and exits 0.
    assert procs.items[-1].terminate() == 0


def test_killed_rollout_consumer_entries_are_reclaimed(
    tmp_path: Path, redis_server: EmbeddedRedis, procs: Processes
) -> None:
    """Replica A takes tasks and hangs in scoring (its reward address never answers); it is SIGKILLed
    holding them. Replica B reclaims A's pending entries after claim_idle_s; every group is applied once."""
    cfg = ported(small_config(tmp_path / "run", redis_server.url, **{"learner.total_steps": 4}))
    hole = Blackhole()
    try:
        procs.start("reward", cfg, tmp_path).wait_serving()
        procs.start("learner", cfg, tmp_path).wait_serving()
        cfg_a = with_overrides(
            cfg, {"rollout.reward_address": f"127.0.0.1:{hole.port}", "rollout.replica_id": "replica-a"}
        )
        a = procs.start("rollout", cfg_a, tmp_path, tag="-a")
        a.wait_serving()
        client = redis.Redis.from_url(redis_server.url)
        keys = StreamKeys.for_run(cfg)

        def a_pending() -> int:
            # Replica A's read loops are consumers "replica-a", "replica-a/1", ...
            rows = client.xpending_range(keys.tasks, TASKS_GROUP, "-", "+", 1000)
            return sum(1 for r in rows if r["consumer"].decode().startswith("replica-a"))

        held = wait_for(a_pending, 60, "replica A to hold tasks")
        a.kill()
        assert held > 0
        cfg_b = with_overrides(cfg, {"rollout.replica_id": "replica-b", "rollout.port": free_port()})
        procs.start("rollout", cfg_b, tmp_path, tag="-b").wait_serving()
        wait_for(lambda: learner_status(cfg.rollout.learner_address).finished, 180, "training to finish")
        assert_exactly_once(cfg, tmp_path / "run", client)
        assert a_pending() == 0  # A's entries were reclaimed and acknowledged by B
    finally:
        hole.close()


def test_learner_restart_continues_from_checkpoint(
    tmp_path: Path, redis_server: EmbeddedRedis, procs: Processes
) -> None:
    """SIGKILL the learner mid-run; a new learner process resumes at its last checkpoint's step and the
    run ends with every group applied exactly once (redelivered groups are re-applied only to the
    restored model, never on top of their own update)."""
    cfg = ported(
        small_config(
            tmp_path / "run", redis_server.url, **{"learner.total_steps": 200, "learner.checkpoint_every_steps": 7}
        )
    )
    procs.start("reward", cfg, tmp_path).wait_serving()
    learner = procs.start("learner", cfg, tmp_path)
    learner.wait_serving()
    procs.start("rollout", cfg, tmp_path).wait_serving()
    wait_for(lambda: learner_status(cfg.rollout.learner_address).step >= 8, 120, "learner step 8")
    learner.kill()
    ckpt_step = final_state(tmp_path / "run")["step"]
    assert ckpt_step % 7 == 0 and 0 < ckpt_step < 200  # killed mid-run
    restarted = procs.start("learner", cfg, tmp_path, tag="-2")
    restarted.wait_serving()
    first = learner_status(cfg.rollout.learner_address)
    assert first.step >= ckpt_step
    wait_for(lambda: learner_status(cfg.rollout.learner_address).finished, 180, "training to finish")
    client = redis.Redis.from_url(redis_server.url)
    assert_exactly_once(cfg, tmp_path / "run", client)
    steps = [json.loads(x)["step"] for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    # After the restart the step counter continues from the checkpoint, not from 0 or from the crash.
    drops = [i for i in range(1, len(steps)) if steps[i] <= steps[i - 1]]
    assert len(drops) <= 1
    if drops:
        assert steps[drops[0]] == ckpt_step + 1
    tail = steps[drops[0] if drops else 0 :]
    assert tail == list(range(tail[0], 201))
    assert "resumed from" in restarted.log(200)


def test_reward_outage_defers_work_instead_of_dropping_it(
    tmp_path: Path, redis_server: EmbeddedRedis, procs: Processes
) -> None:
    """With the reward service down, rollout leaves tasks pending (nothing dropped, nothing trained);
    once the reward service comes up, the run completes with zero dropped groups."""
    cfg = ported(
        small_config(
            tmp_path / "run",
            redis_server.url,
            **{"learner.total_steps": 3, "redis.max_deliveries": 10, "rollout.reward_retry": {"max_attempts": 2}},
        )
    )
    procs.start("learner", cfg, tmp_path).wait_serving()
    rollout = procs.start("rollout", cfg, tmp_path)
    rollout.wait_serving()
    client = redis.Redis.from_url(redis_server.url)
    keys = StreamKeys.for_run(cfg)
    wait_for(lambda: "left pending for retry" in rollout.log(200), 60, "rollout to defer scoring")
    status = learner_status(cfg.rollout.learner_address)
    assert status.groups_applied == 0 and status.groups_dropped == 0
    assert client.xlen(keys.dead) == 0 and client.xlen(keys.groups) == 0
    procs.start("reward", cfg, tmp_path).wait_serving()
    wait_for(lambda: learner_status(cfg.rollout.learner_address).finished, 120, "training to finish")
    state = assert_exactly_once(cfg, tmp_path / "run", client)
    assert state["groups_dropped"] == 0 and client.xlen(keys.dead) == 0
