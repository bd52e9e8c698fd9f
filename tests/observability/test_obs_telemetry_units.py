"""Telemetry in one process: W3C context through a Redis-style entry and real gRPC, the JSONL exporter,
the metrics endpoint, and that everything is a no-op when telemetry is off."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from rspo_proto.v1 import reward_pb2, reward_pb2_grpc, sample_pb2
from services.common import telemetry as tm
from services.common.config import TelemetryConfig
from services.common.grpc_server import start_server
from services.common.metrics import drop_category, learner_metric_name


@pytest.fixture
def fresh() -> Iterator[None]:
    tm.shutdown_telemetry()
    try:
        yield
    finally:
        tm.shutdown_telemetry()


class _Reward(reward_pb2_grpc.RewardServiceServicer):
    async def ScoreGroup(
        self, request: reward_pb2.ScoreGroupRequest, context: grpc.aio.ServicerContext
    ) -> reward_pb2.ScoreGroupResponse:
        if request.group_id == "bad":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad group")
        ok = reward_pb2.Reward(value=1.0, status=reward_pb2.REWARD_STATUS_OK)
        return reward_pb2.ScoreGroupResponse(group_id=request.group_id, rewards=[ok] * len(request.responses))


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def test_traceparent_roundtrip_and_malformed(fresh: None) -> None:
    assert tm.extract_context(None) is None
    assert tm.extract_context("garbage") is None
    assert tm.inject_traceparent() is None  # no span, no header
    tel = tm.setup_telemetry("learner", TelemetryConfig(exporter="console"))
    with tel.tracer.start_as_current_span("x") as span:
        tp = tm.inject_traceparent()
        assert tp == tm.span_traceparent(span)
    ctx = tm.extract_context(tp)
    assert ctx is not None
    from opentelemetry import trace

    sc = trace.get_current_span(ctx).get_span_context()
    assert sc.trace_id == span.get_span_context().trace_id and sc.is_remote


def test_disabled_telemetry_is_a_no_op(fresh: None) -> None:
    tel = tm.setup_telemetry("rollout", TelemetryConfig())
    assert not tel.tracing and tel.metrics is None and tel.wrap_handler("s", "m", handler := object()) is handler
    assert tm.admissions(3).traceparents is None
    task = sample_pb2.PromptTask(group_id="g/1", n=2, k=1, admitted_unix_ns=time.time_ns())
    tm.rollout_begin(task, None)
    assert tel.open_groups == {}
    assert tm.rollout_end(sample_pb2.SampleGroup(group_id="g/1")) is None


def test_one_group_trace_through_real_grpc_and_metrics(fresh: None, tmp_path: Path) -> None:
    spans_path = tmp_path / "spans-{service}.jsonl"
    cfg = TelemetryConfig(exporter="file", file_path=str(spans_path), metrics_port=0)
    tel = tm.setup_telemetry("rollout", cfg)
    assert tm.setup_telemetry("rollout", cfg) is tel  # idempotent
    assert tel.metrics is not None and tel.metrics.port

    async def run() -> None:
        handle = await start_server(
            host="127.0.0.1",
            port=0,
            register=lambda s: reward_pb2_grpc.add_RewardServiceServicer_to_server(_Reward(), s),
            service_names=["rspo.v1.RewardService"],
            max_message_bytes=1 << 20,
        )
        channel = grpc.aio.insecure_channel(handle.address)  # created after setup: instrumented
        stub = reward_pb2_grpc.RewardServiceStub(channel)

        async def score(group_id: str) -> list[reward_pb2.Reward]:
            req = reward_pb2.ScoreGroupRequest(group_id=group_id, responses=["a", "b"])
            return list((await stub.ScoreGroup(req, timeout=5)).rewards)

        adm = tm.admissions(1)
        task = sample_pb2.PromptTask(group_id="run/0/0", n=2, k=1, admitted_unix_ns=time.time_ns())
        assert adm.traceparents and adm.traceparents[0]
        adm.end([task])
        tm.rollout_begin(task, adm.traceparents[0])
        with tm.rollout_generate([task]):
            await asyncio.sleep(0.01)
        rewards = await tm.traced_reward_call(task.group_id, score(task.group_id))
        with pytest.raises(grpc.aio.AioRpcError):
            await tm.traced_reward_call("bad", score("bad"))
        group = sample_pb2.SampleGroup(
            group_id=task.group_id,
            task=task,
            samples=[sample_pb2.Sample(reward=r) for r in rewards],
            status=sample_pb2.GROUP_STATUS_COMPLETE,
            scored_unix_ns=time.time_ns(),
        )
        tp = tm.rollout_end(group)
        tm.learner_received(group, tp)
        tm.learner_received(
            sample_pb2.SampleGroup(group_id="d", status=sample_pb2.GROUP_STATUS_DROPPED, drop_reason="scoring failed"),
            None,
        )
        # The step trained version 1 (it published 2); the samples came from version 0: staleness 1.
        record = {
            "step": 1,
            "policy_version": 2,
            "loss/loss": 0.25,
            "loss/adv_std": 0.5,
            "grad_norm": 2.0,
            "learner_busy_ratio": 0.75,
        }
        tm.learner_step(record, [(group, tp)], time.monotonic() - 0.01)
        await channel.close()
        await handle.server.stop(0)

    asyncio.run(run())
    samples = _scrape(tel.metrics.port)
    method = "rspo.v1.RewardService/ScoreGroup"
    assert samples[("rspo_grpc_server_handled_total", (("code", "OK"), ("method", method)))] == 1
    assert samples[("rspo_grpc_server_handled_total", (("code", "INVALID_ARGUMENT"), ("method", method)))] == 1
    assert samples[("rspo_reward_status_total", (("status", "OK"),))] == 2
    assert samples[("rspo_reward_call_errors_total", (("error", "INVALID_ARGUMENT"),))] == 1
    assert samples[("rspo_groups_dropped_total", (("reason", "scoring_error"),))] == 1
    assert samples[("rspo_learner_loss", ())] == 0.25 and samples[("rspo_learner_adv_std", ())] == 0.5
    assert samples[("rspo_idle_ratio", ())] == pytest.approx(0.25)
    assert samples[("rspo_group_staleness_steps_count", ())] == 1
    assert samples[("rspo_group_staleness_steps_sum", ())] == 1
    for stage in ("task_queue", "generate", "score", "groups_queue", "learner_wait", "end_to_end"):
        assert samples[("rspo_group_stage_seconds_count", (("stage", stage),))] >= 1, stage

    tm.shutdown_telemetry()  # flushes the batch processor
    spans = tm.load_spans(tmp_path / "spans-rollout.jsonl")
    by_name: dict[str, list[dict]] = {}  # type: ignore[type-arg]
    for s in spans:
        by_name.setdefault(s["name"], []).append(s)
    admit = by_name["learner.admit"][0]
    trace_id = admit["trace_id"]
    same = [s for s in spans if s["trace_id"] == trace_id]
    ids = {s["span_id"]: s for s in same}
    group = next(s for s in same if s["name"] == "rollout.group")
    score = next(s for s in same if s["name"] == "rollout.score")
    client = next(s for s in same if s["kind"] == "CLIENT")
    server = next(s for s in same if s["kind"] == "SERVER")
    assert admit["parent_span_id"] is None and admit["attributes"]["rspo.group_id"] == "run/0/0"
    assert group["parent_span_id"] == admit["span_id"]
    assert next(s for s in same if s["name"] == "queue.tasks")["parent_span_id"] == admit["span_id"]
    assert next(s for s in same if s["name"] == "rollout.generate")["parent_span_id"] == group["span_id"]
    assert score["parent_span_id"] == group["span_id"]
    assert client["parent_span_id"] == score["span_id"] and server["parent_span_id"] == client["span_id"]
    assert ids[next(s for s in same if s["name"] == "queue.groups")["parent_span_id"]] is group
    apply = next(s for s in same if s["name"] == "learner.apply")
    assert apply["parent_span_id"] == group["span_id"]
    step = by_name["learner.step"][0]
    assert step["trace_id"] != trace_id and step["links"] == [{"trace_id": trace_id, "span_id": group["span_id"]}]
    assert apply["links"] == [{"trace_id": step["trace_id"], "span_id": step["span_id"]}]


def test_metric_names_and_drop_categories() -> None:
    assert learner_metric_name("loss/adv_mean") == "rspo_learner_adv_mean"
    assert learner_metric_name("max_at_k") == "rspo_learner_max_at_k"
    assert drop_category("scoring failed (Unavailable): x") == "scoring_error"
    assert drop_category("2 of 8 rewards not OK (first: sample 0 TIMEOUT: t)") == "reward_not_ok"
    assert drop_category("task delivered 4 times (max_deliveries=3)") == "max_deliveries"
    assert drop_category("something else") == "other"
