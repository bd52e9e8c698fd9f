"""`rspo train`: the whole system on one machine, as separate processes on loopback.

1. resolve the run directory, pick free ports, start an embedded Redis unless a
   URL is given, and write the resolved config to RUN_DIR/config.yaml;
2. build the model once (so the services never race to build it) and evaluate it
   on held-out prompts ("before");
3. start `rspo serve reward|learner|rollout` as child processes (logs in
   RUN_DIR/logs/), wait until each reports SERVING on the gRPC health service;
4. show progress from the learner's metrics until it reports `finished`;
5. stop the children with SIGTERM (graceful drain), evaluate the final checkpoint
   ("after") and write RUN_DIR/summary.json.
A child that dies stops the run with its log tail and a non-zero exit.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import yaml

from services.common.config import RspoConfig, with_overrides
from services.common.errors import ConfigError
from services.common.redis_server import EmbeddedRedis, free_port
from services.evaluation import evaluate_weights

SERVICES = ("reward", "learner", "rollout")


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class Cluster:
    cfg: RspoConfig
    run_dir: Path
    redis: EmbeddedRedis | None = None
    children: list[Child] = field(default_factory=list)

    def start(self) -> None:
        config_path = self.run_dir / "config.yaml"
        logs = self.run_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env = {k: v for k, v in env.items() if not k.startswith("RSPO__")}  # the written config is complete
        for i, name in enumerate(SERVICES):
            log_path = logs / f"{name}.log"
            child_env = dict(env)
            if self.cfg.telemetry.metrics_port:  # one config, three processes: base, base+1, base+2
                child_env["RSPO__TELEMETRY__METRICS_PORT"] = str(self.cfg.telemetry.metrics_port + i)
            cmd = [
                sys.executable,
                "-m",
                "services.cli",
                "serve",
                name,
                "--config",
                str(config_path),
                "--run-dir",
                str(self.run_dir),
            ]
            with log_path.open("ab") as fh:
                proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=child_env, start_new_session=True)
            self.children.append(Child(name, proc, log_path))

    def check_alive(self) -> None:
        for child in self.children:
            code = child.proc.poll()
            if code is not None:
                raise RuntimeError(f"service '{child.name}' exited with code {code}; last log lines:\n{child.tail()}")

    def stop(self, timeout_s: float = 20.0) -> None:
        # Rollout first (stop producing), then learner, then reward.
        for child in sorted(self.children, key=lambda c: SERVICES[::-1].index(c.name) if c.name in SERVICES else 0):
            if child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for child in self.children:
            try:
                child.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.proc.kill()
                child.proc.wait()
        if self.redis is not None:
            self.redis.cleanup()


def resolve_config(cfg: RspoConfig, run_dir: Path, redis_url: str | None) -> dict[str, Any]:
    """Overrides that make the config concrete for this machine: run dir, free ports, addresses."""
    ports = {name: getattr(cfg, name).port or free_port() for name in SERVICES}
    return {
        "run.run_dir": str(run_dir),
        "redis.url": redis_url,
        "reward.host": "127.0.0.1",
        "learner.host": "127.0.0.1",
        "rollout.host": "127.0.0.1",
        "reward.port": ports["reward"],
        "learner.port": ports["learner"],
        "rollout.port": ports["rollout"],
        "rollout.reward_address": f"127.0.0.1:{ports['reward']}",
        "rollout.learner_address": f"127.0.0.1:{ports['learner']}",
    }


def wait_serving(address: str, timeout_s: float, cluster: Cluster) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            cluster.check_alive()
            try:
                if (
                    stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0).status
                    == health_pb2.HealthCheckResponse.SERVING
                ):
                    return
            except grpc.RpcError:
                time.sleep(0.2)
    raise TimeoutError(f"service at {address} not SERVING after {timeout_s}s")


def learner_status(address: str) -> Any:
    from rspo_proto.v1 import learner_pb2, learner_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        return learner_pb2_grpc.LearnerServiceStub(channel).GetStatus(learner_pb2.LearnerStatusRequest(), timeout=5)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


RUN_DIR_MARKERS = ("config.yaml", "checkpoints", "metrics.jsonl", "summary.json")


def prepare_run_dir(run_dir: Path, fresh: bool) -> None:
    """Create the run dir; with `fresh`, first remove a previous run there (only if it looks like one).

    Without `fresh` an existing run is resumed from its last checkpoint (a finished one just re-evaluates).
    """
    if fresh and run_dir.exists():
        if not any((run_dir / m).exists() for m in RUN_DIR_MARKERS):
            raise ConfigError(
                f"--fresh would delete {run_dir}, which does not look like an rspo run directory "
                f"(none of {', '.join(RUN_DIR_MARKERS)}); pick an empty or new --run-dir"
            )
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)


def train(
    cfg: RspoConfig, run_dir: Path, redis_url: str | None, progress: bool = True, fresh: bool = False
) -> dict[str, Any]:
    from services.progress import ProgressView

    t_start = time.monotonic()
    run_dir = run_dir.resolve()
    prepare_run_dir(run_dir, fresh)
    redis = None
    if redis_url is None and cfg.redis.url is None:
        redis = EmbeddedRedis(run_dir / "redis", persist=True).start()
        redis_url = redis.url
    cfg = with_overrides(cfg, resolve_config(cfg, run_dir, redis_url or cfg.redis.url))
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    cluster = Cluster(cfg, run_dir, redis)
    try:
        before = evaluate_weights(cfg, None, 0)
        cluster.start()
        for name in SERVICES:
            wait_serving(f"127.0.0.1:{getattr(cfg, name).port}", 180.0, cluster)
        view = ProgressView(cfg, enabled=progress)
        with view:
            while True:
                cluster.check_alive()
                status = learner_status(cfg.rollout.learner_address)
                view.update(status, read_metrics(run_dir / "metrics.jsonl"))
                if status.finished:
                    break
                time.sleep(0.5)
    finally:
        cluster.stop()
    after = evaluate_weights(cfg, *_final_weights(run_dir))
    summary = build_summary(cfg, before, after, read_metrics(run_dir / "metrics.jsonl"), time.monotonic() - t_start)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _final_weights(run_dir: Path) -> tuple[dict[str, Any], int]:
    from services.learner.checkpoint import latest_checkpoint, load_model_weights

    ckpt = latest_checkpoint(run_dir / "checkpoints")
    if ckpt is None:
        raise RuntimeError(f"no checkpoint in {run_dir / 'checkpoints'}: the learner never completed a step")
    state = json.loads((ckpt / "state.json").read_text())
    return load_model_weights(ckpt), int(state["policy_version"])


def build_summary(
    cfg: RspoConfig,
    before: dict[str, Any],
    after: dict[str, Any],
    metrics: list[dict[str, Any]],
    wall_s: float,
) -> dict[str, Any]:
    k = str(cfg.task.k)
    last = metrics[-1] if metrics else {}
    summary: dict[str, Any] = {
        "run_id": cfg.run.run_id,
        "method": cfg.learner.method,
        "task": cfg.task.family,
        "k": cfg.task.k,
        "n": cfg.task.n,
        "steps": int(last.get("step", 0)),
        "groups_applied": int(last.get("groups_applied", 0)),
        "groups_dropped": int(last.get("groups_dropped", 0)),
        "groups_duplicate": int(last.get("groups_duplicate", 0)),
        "max_at_k_before": before["max_at_k"].get(k),
        "max_at_k_after": after["max_at_k"].get(k),
        "eval_before": before,
        "eval_after": after,
        "wall_s": round(wall_s, 2),
    }
    # Pass@k counts full-credit responses (reward >= 1); on graded tasks Max@k is the main metric.
    summary["pass_at_k_before"] = before["pass_at_k"].get(k)
    summary["pass_at_k_after"] = after["pass_at_k"].get(k)
    return summary
