"""Telemetry of the real system: reward, learner and rollout as OS processes on real gRPC and a real Redis.

One run (shared by the tests of this module) with `telemetry.exporter=file` (one JSONL file per
service) and a Prometheus port per service. During the run each /metrics endpoint is scraped twice;
after a graceful stop (which flushes the span batches) one group's trace is rebuilt from the three
files and its parent-child links are checked, queue waits included.
"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.common.config import RspoConfig, with_overrides
from services.common.redis_server import EmbeddedRedis, free_port
from services.common.telemetry import load_spans
from tests.conftest import small_config
from tests.integration.procs import Processes, learner_status, wait_for
from tests.integration.test_pipeline import ported

pytestmark = pytest.mark.timeout(300)

SERVICES = ("reward", "learner", "rollout")
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@dataclass
class Run:
    cfg: RspoConfig
    tmp: Path
    metrics_ports: dict[str, int]
    scrapes: list[dict[str, Samples]] = field(default_factory=list)
    spans: list[dict[str, Any]] = field(default_factory=list)
    spans_by_file: dict[str, int] = field(default_factory=dict)


def scrape(port: int) -> Samples:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): float(s.value)
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def try_scrape(port: int) -> Samples | None:
    try:
        return scrape(port)
    except OSError:
        return None


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    tmp = tmp_path_factory.mktemp("obs")
    procs = Processes()
    with EmbeddedRedis(tmp / "redis") as redis_srv:
        base = small_config(
            tmp / "run",
            redis_srv.url,
            **{
                "learner.total_steps": 6,
                "telemetry.exporter": "file",
                "telemetry.file_path": str(tmp / "spans-{service}.jsonl"),
            },
        )
        cfg = ported(base)
        ports = {name: free_port() for name in SERVICES}
        result = Run(cfg, tmp, ports)
        try:
            for name in SERVICES:
                procs.start(name, with_overrides(cfg, {"telemetry.metrics_port": ports[name]}), tmp)
            # First scrape as soon as each endpoint answers: the metrics server starts before the model
            # is built, so this is before any work (the whole tiny run takes only seconds).
            result.scrapes.append({name: wait_for(lambda n=name: try_scrape(ports[n]), 60, name) for name in SERVICES})
            for sp in procs.items:
                sp.wait_serving()
            wait_for(lambda: learner_status(cfg.rollout.learner_address).finished, 180, "training to finish")
            time.sleep(1.0)
            result.scrapes.append({name: scrape(ports[name]) for name in SERVICES})
        finally:
            codes = [sp.terminate(timeout_s=20) for sp in reversed(procs.items)]  # SIGTERM: drain, flush spans
            procs.stop_all()
        assert codes == [0, 0, 0], [sp.log() for sp in procs.items]
        for name in SERVICES:
            spans = load_spans(tmp / f"spans-{name}.jsonl")
            result.spans_by_file[name] = len(spans)
            result.spans.extend(spans)
        yield result


def _value(samples: Samples, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    assert key in samples, f"missing series {name}{labels or ''}"
    return samples[key]


def _before(samples: Samples, name: str, **labels: str) -> float:
    """A series in the first scrape (before any work): absent counts as 0."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_one_group_trace_spans_all_three_services_and_both_queues(run: Run) -> None:
    spans = run.spans
    assert all(run.spans_by_file[name] > 0 for name in SERVICES), run.spans_by_file
    applies = [s for s in spans if s["name"] == "learner.apply"]
    assert len(applies) >= run.cfg.learner.total_steps * run.cfg.learner.groups_per_step
    apply = applies[0]
    gid = apply["attributes"]["rspo.group_id"]
    trace = [s for s in spans if s["trace_id"] == apply["trace_id"]]
    by_id = {s["span_id"]: s for s in trace}

    def one(name: str, kind: str | None = None) -> dict[str, Any]:
        found = [s for s in trace if s["name"] == name and (kind is None or s["kind"] == kind)]
        assert found, f"no {name} ({kind}) span in the trace of {gid}: {sorted({s['name'] for s in trace})}"
        return found[-1]  # the last attempt, if a call was retried

    admit = one("learner.admit")
    group = one("rollout.group")
    score = one("rollout.score")
    client = one("/rspo.v1.RewardService/ScoreGroup", "CLIENT")
    server = one("/rspo.v1.RewardService/ScoreGroup", "SERVER")
    # Who recorded what: the trace crosses three processes.
    assert admit["service"] == "rspo-learner" and apply["service"] == "rspo-learner"
    assert group["service"] == client["service"] == "rspo-rollout"
    assert server["service"] == "rspo-reward"
    # Parent-child links: learner -> (tasks queue) -> rollout -> gRPC -> reward; rollout -> (groups queue) -> learner.
    assert admit["parent_span_id"] is None and admit["attributes"]["rspo.group_id"] == gid
    assert one("queue.tasks")["parent_span_id"] == admit["span_id"]
    assert group["parent_span_id"] == admit["span_id"] and group["attributes"]["rspo.group_id"] == gid
    assert one("rollout.generate")["parent_span_id"] == group["span_id"]
    assert score["parent_span_id"] == group["span_id"]
    assert client["parent_span_id"] == score["span_id"]
    assert server["parent_span_id"] == client["span_id"]
    assert one("queue.groups")["parent_span_id"] == group["span_id"]
    assert apply["parent_span_id"] == group["span_id"]
    assert all(s["parent_span_id"] is None or s["parent_span_id"] in by_id for s in trace)  # no dangling parents
    # Causal order of the wall-clock timestamps (one machine, one clock).
    q_tasks, q_groups = one("queue.tasks"), one("queue.groups")
    assert admit["start_unix_ns"] <= q_tasks["start_unix_ns"] <= q_tasks["end_unix_ns"] <= group["start_unix_ns"]
    assert client["start_unix_ns"] <= server["start_unix_ns"] <= server["end_unix_ns"] <= client["end_unix_ns"]
    assert group["end_unix_ns"] <= q_groups["end_unix_ns"] <= apply["start_unix_ns"] + 10**9
    # The step that applied it: its own trace, linked both ways.
    (step,) = [s for s in spans if s["span_id"] == apply["links"][0]["span_id"]]
    assert step["name"] == "learner.step" and step["trace_id"] != apply["trace_id"]
    assert {"trace_id": group["trace_id"], "span_id": group["span_id"]} in step["links"]
    assert step["attributes"]["rspo.groups"] == run.cfg.learner.groups_per_step


def test_each_service_exposes_key_metrics_that_move(run: Run) -> None:
    first, last = run.scrapes
    for name in SERVICES:
        assert _value(last[name], "rspo_service_info", service=name) == 1
    # learner: step record, staleness, stage latencies, queues, idle ratio, weight serving
    lf, ll = first["learner"], last["learner"]
    assert _before(lf, "rspo_learner_step") < _value(ll, "rspo_learner_step") == run.cfg.learner.total_steps
    for series in (
        "rspo_learner_loss",
        "rspo_learner_grad_norm",
        "rspo_learner_max_at_k",
        "rspo_learner_pass_at_k",
        "rspo_learner_adv_std",
        "rspo_learner_adv_abs_max",
        "rspo_learner_groups_per_s",
    ):
        _value(ll, series)
    assert 0.0 <= _value(ll, "rspo_idle_ratio") <= 1.0
    assert _before(lf, "rspo_group_staleness_steps_count") < _value(ll, "rspo_group_staleness_steps_count")
    for stage in ("groups_queue", "learner_wait", "learner_step", "end_to_end"):
        assert _before(lf, "rspo_group_stage_seconds_count", stage=stage) < _value(
            ll, "rspo_group_stage_seconds_count", stage=stage
        ), stage
    for queue, group in (("tasks", "rollout"), ("groups", "learner")):
        _value(ll, "rspo_queue_lag", queue=queue, group=group)
        _value(ll, "rspo_queue_pending", queue=queue, group=group)
    assert _value(ll, "rspo_grpc_server_handled_total", method="rspo.v1.LearnerService/FetchWeights", code="OK") > 0
    # rollout: its counters, generation throughput, reward calls and statuses, weight sync bytes
    rf, rl = first["rollout"], last["rollout"]
    for series in (
        "rspo_rollout_groups_published_total",
        "rspo_generated_tokens_total",
        "rspo_reward_call_seconds_count",
    ):
        assert _before(rf, series) < _value(rl, series), series
    assert _before(rf, "rspo_reward_status_total", status="OK") < _value(rl, "rspo_reward_status_total", status="OK")
    assert _value(rl, "rspo_generation_tokens_per_second") > 0
    assert _value(rl, "rspo_weight_sync_bytes_total") > 0 and _value(rl, "rspo_weight_sync_seconds_count") > 0
    assert _value(rl, "rspo_busy_seconds_total") > 0 and 0.0 <= _value(rl, "rspo_idle_ratio") < 1.0
    for stage in ("task_queue", "generate", "score"):
        assert _value(rl, "rspo_group_stage_seconds_count", stage=stage) > 0
    _value(rl, "rspo_queue_pending", queue="tasks", group="rollout")
    # reward: per-method server metrics from the interceptor added in start_server
    method = "rspo.v1.RewardService/ScoreGroup"
    assert _before(first["reward"], "rspo_grpc_server_handled_total", method=method, code="OK") < _value(
        last["reward"], "rspo_grpc_server_handled_total", method=method, code="OK"
    )
    assert _value(last["reward"], "rspo_grpc_server_handling_seconds_count", method=method) > 0
