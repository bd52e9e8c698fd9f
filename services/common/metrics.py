"""Prometheus metrics of one service process: its own registry, served over HTTP at /metrics.

Every service exposes the same families (unused ones simply have no samples), so one
scrape config fits all three; the `service` label of `rspo_service_info` tells them apart.
What each process fills in:
- all: `rspo_grpc_server_handled_total{method,code}`, `rspo_grpc_server_handling_seconds{method}`
  (every handler `grpc_server.start_server` registers);
- rollout: its `RolloutCounters` (read at scrape time, never copied), reward-call latency and
  statuses as the caller sees them, weight-fetch seconds and bytes, busy/idle, stage latencies
  `task_queue`, `generate`, `score`, and queue lag/pending (XINFO GROUPS at scrape time);
- learner: the step record of `LearnerWorker._record` (exported, not recomputed), staleness,
  stage latencies `groups_queue`, `learner_wait`, `learner_step`, `end_to_end`, dropped groups
  by reason, queue lag/pending.
Nothing here runs on the hot path except counter/histogram updates (a lock and an add).
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from collections.abc import Iterator
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from services.common.config import RspoConfig

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
STALENESS_BUCKETS = (0, 1, 2, 3, 4, 6, 8, 16, 32, 64)
STAGES = ("task_queue", "generate", "score", "groups_queue", "learner_wait", "learner_step", "end_to_end")


class _Counters(Protocol):
    groups_published: int
    groups_dropped: int
    weight_syncs: int
    generated_tokens: int
    generate_s: float
    score_s: float
    sync_s: float


def learner_metric_name(key: str) -> str:
    """`LearnerWorker._record` key -> gauge name: 'loss/adv_mean' -> 'rspo_learner_adv_mean'."""
    key = key.removeprefix("loss/")
    return "rspo_learner_" + re.sub(r"[^a-zA-Z0-9_]", "_", key)


def drop_category(reason: str) -> str:
    """A bounded label for a free-text drop reason (labels must not explode in cardinality)."""
    r = reason.lower()
    if r.startswith("scoring failed"):
        return "scoring_error"
    if "rewards not ok" in r:
        return "reward_not_ok"
    if "delivered" in r and "max_deliveries" in r:
        return "max_deliveries"
    if "unusable" in r or "malformed" in r:
        return "invalid"
    return "other"


class ServiceMetrics:
    """The metric families of one process, in a private registry (no global state, testable)."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.registry = CollectorRegistry()
        self.started = time.monotonic()
        r = self.registry
        Info("rspo_service", "Which rspo service this process is", registry=r).info({"service": service})
        self.stage_seconds = Histogram(
            "rspo_group_stage_seconds",
            f"Seconds a group spent in one stage ({', '.join(STAGES)})",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.staleness = Histogram(
            "rspo_group_staleness_steps",
            "Policy versions between a group's generation and the step that applied it",
            buckets=STALENESS_BUCKETS,
            registry=r,
        )
        self.groups_dropped = Counter(
            "rspo_groups_dropped", "Groups resolved as DROPPED, by reason category", ["reason"], registry=r
        )
        self.reward_seconds = Histogram(
            "rspo_reward_call_seconds",
            "ScoreGroup latency seen by the caller, per attempt (client retries included)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.reward_status = Counter(
            "rspo_reward_status",
            "Rewards received, by RewardStatus (OK, INVALID, TIMEOUT, ERROR)",
            ["status"],
            registry=r,
        )
        self.reward_errors = Counter(
            "rspo_reward_call_errors", "ScoreGroup calls that failed, by gRPC code or error type", ["error"], registry=r
        )
        self.weight_sync_seconds = Histogram(
            "rspo_weight_sync_seconds", "Seconds to fetch one policy snapshot", buckets=LATENCY_BUCKETS, registry=r
        )
        self.weight_sync_bytes = Counter("rspo_weight_sync_bytes", "Bytes of policy snapshots fetched", registry=r)
        self.busy_seconds = Counter("rspo_busy_seconds", "Seconds this process spent working (not waiting)", registry=r)
        self.idle_ratio = Gauge(
            "rspo_idle_ratio", "Fraction of wall time since start spent waiting for work", registry=r
        )
        self.grpc_handled = Counter(
            "rspo_grpc_server_handled",
            "RPCs completed by this server, by method and status code",
            ["method", "code"],
            registry=r,
        )
        self.grpc_seconds = Histogram(
            "rspo_grpc_server_handling_seconds",
            "Server-side RPC latency",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        # Label children resolved once: the hot path does one observe, no label lookup.
        self.stage = {name: self.stage_seconds.labels(name) for name in STAGES}
        self._busy_s = 0.0
        self._idle_override: float | None = None
        self.idle_ratio.set_function(self._idle)
        self._learner: dict[str, Gauge] = {}
        self._lock = threading.Lock()
        self._http: Any = None
        self.port: int | None = None

    # ---- serving ------------------------------------------------------------------------------
    def serve(self, port: int, addr: str = "0.0.0.0") -> int:
        """Start the /metrics HTTP server (a daemon thread); port 0 picks a free one. Returns the port."""
        server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        self._http = server
        self.port = int(server.server_address[1])
        log.info("metrics for %s on http://%s:%d/metrics", self.service, addr, self.port)
        return self.port

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None

    # ---- idle / busy ------------------------------------------------------------------------------
    def add_busy(self, seconds: float) -> None:
        self._busy_s += seconds
        self.busy_seconds.inc(seconds)

    def set_idle(self, ratio: float) -> None:
        """For processes that measure busy time themselves (the learner's StepClock)."""
        self._idle_override = ratio

    def _idle(self) -> float:
        if self._idle_override is not None:
            return self._idle_override
        wall = max(time.monotonic() - self.started, 1e-9)
        return max(0.0, 1.0 - self._busy_s / wall)

    # ---- learner step records -------------------------------------------------------------------
    def set_learner(self, record: dict[str, Any]) -> None:
        """Export every numeric field of a step record as a gauge (created on first sight)."""
        for key, value in record.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            name = learner_metric_name(key)
            gauge = self._learner.get(name)
            if gauge is None:
                with self._lock:
                    gauge = self._learner.get(name)
                    if gauge is None:
                        gauge = Gauge(name, f"Learner step record field '{key}' (last step)", registry=self.registry)
                        self._learner[name] = gauge
            gauge.set(float(value))

    # ---- collectors read at scrape time ---------------------------------------------------------
    def watch_rollout(self, counters: _Counters) -> None:
        self.registry.register(_RolloutCollector(counters))

    def watch_queues(self, cfg: RspoConfig) -> None:
        self.registry.register(_QueueCollector(cfg))


class _RolloutCollector(Collector):
    """`RolloutWorker.counters` as Prometheus series, read when scraped (the worker keeps counting)."""

    def __init__(self, counters: _Counters) -> None:
        self.c = counters

    def collect(self) -> Iterator[Metric]:
        c = self.c
        yield CounterMetricFamily(
            "rspo_rollout_groups_published", "Groups published COMPLETE", value=c.groups_published
        )
        yield CounterMetricFamily("rspo_rollout_groups_dropped", "Groups published DROPPED", value=c.groups_dropped)
        yield CounterMetricFamily("rspo_rollout_weight_syncs", "Policy versions loaded", value=c.weight_syncs)
        yield CounterMetricFamily("rspo_generated_tokens", "Response tokens generated", value=c.generated_tokens)
        yield CounterMetricFamily("rspo_rollout_generate_seconds", "Seconds in generation", value=c.generate_s)
        yield CounterMetricFamily(
            "rspo_rollout_score_seconds", "Seconds in scoring (summed over groups)", value=c.score_s
        )
        yield CounterMetricFamily("rspo_rollout_sync_seconds", "Seconds in weight sync (fetch + load)", value=c.sync_s)
        tps = c.generated_tokens / c.generate_s if c.generate_s > 0 else 0.0
        yield GaugeMetricFamily(
            "rspo_generation_tokens_per_second", "Generated tokens per second of generation time", value=tps
        )


class _QueueCollector(Collector):
    """Queue lag and pending counts of the run's streams (`StreamQueue.lag()`), asked when scraped."""

    def __init__(self, cfg: RspoConfig) -> None:
        self.cfg = cfg

    def collect(self) -> Iterator[Metric]:
        lag = GaugeMetricFamily("rspo_queue_lag", "Entries not yet delivered to the group", labels=["queue", "group"])
        pending = GaugeMetricFamily(
            "rspo_queue_pending", "Entries delivered but not acknowledged", labels=["queue", "group"]
        )
        dead = GaugeMetricFamily("rspo_queue_dead_letters", "Entries in the dead-letter stream")
        try:
            rows, dead_len = asyncio.run(self._read())
        except Exception as err:  # Redis down: the scrape still answers, without these series
            log.debug("queue metrics unavailable: %s", err)
            return
        for queue, group, counts in rows:
            lag.add_metric([queue, group], counts["lag"])
            pending.add_metric([queue, group], counts["pending"])
        dead.add_metric([], dead_len)
        yield lag
        yield pending
        yield dead

    async def _read(self) -> tuple[list[tuple[str, str, dict[str, int]]], int]:
        from redis.exceptions import ResponseError

        from services.common.streams import GROUPS_GROUP, TASKS_GROUP, StreamKeys, StreamQueue, connect

        keys = StreamKeys.for_run(self.cfg)
        client = connect(self.cfg.redis)
        try:
            rows = []
            for queue, stream, group in (("tasks", keys.tasks, TASKS_GROUP), ("groups", keys.groups, GROUPS_GROUP)):
                try:
                    counts = await StreamQueue(client, stream, group, "metrics", self.cfg.redis).lag()
                except ResponseError:  # the stream does not exist yet
                    continue
                rows.append((queue, group, counts))
            return rows, int(await client.xlen(keys.dead))
        finally:
            await client.aclose()
