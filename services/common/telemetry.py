"""Tracing (OpenTelemetry), metrics (Prometheus) and log correlation for the rspo services.

One trace per sample group, across the three processes and both queues:

    learner.admit (learner, root)                       task XADDed with its `traceparent`
    ├── queue.tasks        (rollout)  admitted_unix_ns -> read by a replica
    └── rollout.group      (rollout)  read -> published; its context rides on the groups entry
        ├── rollout.generate                             the batched generate call that produced it
        ├── rollout.score                                one per scoring attempt
        │   └── rspo.v1.RewardService/ScoreGroup (client span, rollout)
        │       └── rspo.v1.RewardService/ScoreGroup (server span, reward; via gRPC metadata)
        ├── queue.groups   (learner)  scored_unix_ns -> read by the learner
        └── learner.apply  (learner)  the step that applied the group, linked to its learner.step
    learner.step (learner, root of its own trace) with one link per applied group

Context crosses gRPC in the W3C `traceparent` metadata entry (`grpc_telemetry`: grpc.aio channels
created after setup are wrapped, and `grpc_server.start_server` wraps every method handler; no
interceptors, which cost a third of loopback RPC throughput) and crosses Redis in the stream entry's
`traceparent` field. Queue waits are spans built after the fact from the
timestamps in the payloads (wall clock: across machines they include clock skew).

Exporters (`telemetry.exporter`): none (default: a no-op tracer, no provider, nothing recorded),
console, otlp (`otlp_endpoint`, gRPC), file (JSONL, one span per line; `file_path` may contain
`{service}`). Metrics are independent of tracing: on when `telemetry.metrics_port` is set.

The worker hooks below are module functions that do nothing until `setup_telemetry` ran, so the
worker loops call them unconditionally; they never raise into the loop for telemetry reasons.
This module knows nothing about the loops beyond the proto messages they pass.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Awaitable, Iterator, Sequence
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

from rspo_proto.v1 import reward_pb2, sample_pb2
from services.common.config import RspoConfig, TelemetryConfig

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import SpanExportResult

    from services.common.metrics import ServiceMetrics

log = logging.getLogger(__name__)

T = TypeVar("T")

_PROPAGATOR = TraceContextTextMapPropagator()
_NOOP_TRACER = trace.NoOpTracer()
_current_group: ContextVar[str | None] = ContextVar("rspo_group_id", default=None)
_MAX_OPEN = 8192  # bound on per-group state kept between hooks (a leak guard, never reached normally)


# ---- W3C trace context in Redis entries ---------------------------------------------------------
def span_traceparent(span: Span) -> str | None:
    """The W3C `traceparent` of a span, or None for a non-recording/invalid one (tracing off)."""
    sc = span.get_span_context()
    if not sc.is_valid:
        return None
    return f"00-{sc.trace_id:032x}-{sc.span_id:016x}-{int(sc.trace_flags):02x}"


def inject_traceparent(ctx: Context | None = None) -> str | None:
    """The `traceparent` of the current (or given) context's span, for a stream entry."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=ctx)
    return carrier.get("traceparent")


def extract_context(traceparent: str | None) -> Context | None:
    """A context whose parent is the span named by `traceparent`; None if absent or malformed."""
    if not traceparent:
        return None
    ctx = _PROPAGATOR.extract({"traceparent": traceparent})
    return ctx if trace.get_current_span(ctx).get_span_context().is_valid else None


def is_sampled(traceparent: str | None) -> bool:
    """Whether a W3C `traceparent` has the sampled flag (cheap: no context objects are built)."""
    if not traceparent:
        return False
    try:
        return bool(int(traceparent.rsplit("-", 1)[1], 16) & 1)
    except (IndexError, ValueError):
        return False


def _link(traceparent: str | None) -> Link | None:
    ctx = extract_context(traceparent)
    return Link(trace.get_current_span(ctx).get_span_context()) if ctx is not None else None


# ---- the JSONL file exporter -----------------------------------------------------------------------
def span_to_dict(span: ReadableSpan) -> dict[str, Any]:
    ctx = span.get_span_context()
    parent = span.parent
    assert ctx is not None
    return {
        "name": span.name,
        "service": span.resource.attributes.get("service.name"),
        "trace_id": f"{ctx.trace_id:032x}",
        "span_id": f"{ctx.span_id:016x}",
        "parent_span_id": f"{parent.span_id:016x}" if parent is not None else None,
        "kind": span.kind.name,
        "start_unix_ns": span.start_time,
        "end_unix_ns": span.end_time,
        "status": span.status.status_code.name,
        "attributes": dict(span.attributes or {}),
        "links": [
            {"trace_id": f"{ln.context.trace_id:032x}", "span_id": f"{ln.context.span_id:016x}"} for ln in span.links
        ],
    }


def load_spans(path: str | Path) -> list[dict[str, Any]]:
    """Spans written by the file exporter (for tests and offline debugging)."""
    p = Path(path)
    if not p.is_file():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def _make_file_exporter(path: str | Path) -> Any:
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    class JsonlSpanExporter(SpanExporter):
        """Appends spans as JSON lines; each batch is one O_APPEND write, so several processes may
        share a file without interleaving lines."""

        def __init__(self, target: Path) -> None:
            target.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            self._lock = threading.Lock()

        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            data = "".join(json.dumps(span_to_dict(s), separators=(",", ":")) + "\n" for s in spans).encode()
            with self._lock:
                if self._fd < 0:
                    return SpanExportResult.FAILURE
                os.write(self._fd, data)
            return SpanExportResult.SUCCESS

        def shutdown(self) -> None:
            with self._lock:
                if self._fd >= 0:
                    os.close(self._fd)
                    self._fd = -1

        def force_flush(self, timeout_millis: int = 30_000) -> bool:
            return True

    return JsonlSpanExporter(Path(path))


# ---- logging ---------------------------------------------------------------------------------------
class TraceContextFilter(logging.Filter):
    """Adds `service`, `trace_id`, `span_id` and `group_id` to records (shown by the JSON log format)."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "service"):
            record.service = self.service
        sc = trace.get_current_span().get_span_context()
        if sc.is_valid:
            record.trace_id = f"{sc.trace_id:032x}"
            record.span_id = f"{sc.span_id:016x}"
        gid = _current_group.get()
        if gid and not hasattr(record, "group_id"):
            record.group_id = gid
        return True


# ---- setup -------------------------------------------------------------------------------------------
class Telemetry:
    """What `setup_telemetry` built for this process. `tracing`/`metrics` tell which parts are on."""

    def __init__(
        self,
        service: str,
        cfg: TelemetryConfig,
        provider: TracerProvider | None = None,
        metrics: ServiceMetrics | None = None,
    ) -> None:
        self.service = service
        self.cfg = cfg
        self.provider = provider
        self.tracer: trace.Tracer = provider.get_tracer("rspo") if provider is not None else _NOOP_TRACER
        self.tracing = provider is not None
        self.metrics = metrics
        self.active = self.tracing or metrics is not None
        # Per-group state between hooks: rollout's open group spans, learner's receive times.
        self.open_groups: dict[str, Span] = {}
        self.received_ns: dict[str, int] = {}
        self._channel_patch: Any = None
        self._log_filter: TraceContextFilter | None = None
        self._tensorboard: Any = None

    def wrap_handler(self, service: str, method_name: str, handler: Any) -> Any:
        """A gRPC method handler with a SERVER span and per-method metrics (unchanged when telemetry is off).
        `grpc_server.start_server` applies it to every method it registers."""
        if not (self.tracing or self.metrics is not None):
            return handler
        from services.common.grpc_telemetry import wrap_handler

        return wrap_handler(self, service, method_name, handler)

    def watch_queues(self, cfg: RspoConfig) -> None:
        """Export the run's queue lag/pending counts (read from Redis at scrape time)."""
        if self.metrics is not None:
            self.metrics.watch_queues(cfg)

    def watch_rollout(self, counters: Any) -> None:
        """Export a `RolloutCounters` object as it changes."""
        if self.metrics is not None:
            self.metrics.watch_rollout(counters)

    def open_tensorboard(self, log_dir: Path) -> bool:
        """Also write learner step records as TensorBoard scalars (needs the `tensorboard` package)."""
        try:
            from torch.utils.tensorboard import SummaryWriter
        except Exception as err:  # tensorboard not installed: say so once, keep running
            log.warning("telemetry.tensorboard is on but TensorBoard is unavailable (%s); pip install tensorboard", err)
            return False
        self._tensorboard = SummaryWriter(log_dir=str(log_dir))
        self.active = True
        return True

    def shutdown(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()
        if self._channel_patch is not None:
            self._channel_patch.remove()
        if self.provider is not None:
            self.provider.shutdown()
        if self.metrics is not None:
            self.metrics.close()
        if self._log_filter is not None:
            for handler in logging.getLogger().handlers:
                handler.removeFilter(self._log_filter)


_DISABLED = Telemetry("none", TelemetryConfig())
_STATE: Telemetry | None = None
_SETUP_LOCK = threading.Lock()


def get_telemetry() -> Telemetry:
    """This process's telemetry; a disabled one before `setup_telemetry`."""
    return _STATE or _DISABLED


def _build_provider(service: str, cfg: TelemetryConfig) -> TracerProvider:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    # Roots (admissions, steps) are sampled by ratio; everything downstream follows the traceparent's flag.
    provider = TracerProvider(
        resource=Resource.create({"service.name": f"rspo-{service}", "rspo.service": service}),
        sampler=ParentBased(TraceIdRatioBased(cfg.trace_sample_ratio)),
    )
    if cfg.exporter == "file":
        if not cfg.file_path:
            raise ValueError("telemetry.exporter 'file' needs telemetry.file_path (a JSONL path; may use {service})")
        exporter = _make_file_exporter(cfg.file_path.replace("{service}", service))
        provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=500))
    elif cfg.exporter == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    else:  # otlp
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        endpoint = cfg.otlp_endpoint
        insecure = endpoint.startswith("http://")
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint, insecure=insecure)))
    return provider


def setup_telemetry(service_name: str, cfg: TelemetryConfig) -> Telemetry:
    """Configure this process once (later calls return the first result).

    exporter none and no metrics_port: nothing is installed; every hook returns at its first line.
    With tracing on, grpc.aio channels created *after* this call carry trace context (so call it
    before building clients), and `start_server` adds the tracing interceptor.
    """
    global _STATE
    with _SETUP_LOCK:
        if _STATE is not None:
            if _STATE.service != service_name or _STATE.cfg != cfg:
                log.warning("telemetry already set up for %s; ignoring a second setup", _STATE.service)
            return _STATE
        provider = _build_provider(service_name, cfg) if cfg.exporter != "none" else None
        metrics = None
        if cfg.metrics_port is not None:
            from services.common.metrics import ServiceMetrics

            metrics = ServiceMetrics(service_name)
            metrics.serve(cfg.metrics_port)
        tel = Telemetry(service_name, cfg, provider, metrics)
        if provider is not None:
            from services.common.grpc_telemetry import ChannelPatch

            tel._channel_patch = ChannelPatch(tel.tracer)
        tel._log_filter = TraceContextFilter(service_name)
        for handler in logging.getLogger().handlers:
            handler.addFilter(tel._log_filter)
        _STATE = tel
        return tel


def setup_service_telemetry(service: str, cfg: RspoConfig) -> Telemetry:
    """`setup_telemetry` plus what a service of the run adds: queue metrics, TensorBoard (learner)."""
    tel = setup_telemetry(service, cfg.telemetry)
    if service in ("rollout", "learner"):
        tel.watch_queues(cfg)
    if service == "learner" and cfg.telemetry.tensorboard:
        tel.open_tensorboard(Path(cfg.run.run_dir) / "tensorboard")
    return tel


def shutdown_telemetry() -> None:
    """Flush and remove this process's telemetry (tests and benchmarks set it up again)."""
    global _STATE
    with _SETUP_LOCK:
        if _STATE is not None:
            _STATE.shutdown()
        _STATE = None


# ---- hooks: rollout --------------------------------------------------------------------------------
def _parent(tel: Telemetry, group_id: str) -> Context | None:
    span = tel.open_groups.get(group_id)
    return trace.set_span_in_context(span) if span is not None else None


def rollout_begin(task: sample_pb2.PromptTask, traceparent: str | None) -> None:
    """A replica took `task` off the tasks queue: close its queue-wait, open its group span."""
    tel = _STATE
    if tel is None or not tel.active:
        return
    now = time.time_ns()
    admitted = int(task.admitted_unix_ns)
    if tel.metrics is not None and admitted:
        tel.metrics.stage["task_queue"].observe(max(0, now - admitted) / 1e9)
    if not tel.tracing or not is_sampled(traceparent):
        return  # unsampled group: no spans here, downstream hooks find no open span and skip too
    parent = extract_context(traceparent)
    attrs: dict[str, AttributeValue] = {"rspo.group_id": task.group_id, "rspo.n": int(task.n), "rspo.k": int(task.k)}
    if admitted:
        wait = tel.tracer.start_span(
            "queue.tasks", context=parent, kind=SpanKind.CONSUMER, start_time=min(admitted, now), attributes=attrs
        )
        wait.end(end_time=now)
    old = tel.open_groups.pop(task.group_id, None)
    if old is not None:
        old.end()
    elif len(tel.open_groups) >= _MAX_OPEN:
        tel.open_groups.pop(next(iter(tel.open_groups))).end()
    tel.open_groups[task.group_id] = tel.tracer.start_span(
        "rollout.group", context=parent, start_time=now, attributes={**attrs, "rspo.replica": tel.service}
    )


@contextlib.contextmanager
def rollout_generate(tasks: Sequence[sample_pb2.PromptTask]) -> Iterator[None]:
    """Around one batched generate call: a `rollout.generate` span under each group's span."""
    tel = _STATE
    if tel is None or not tel.active:
        yield
        return
    start = time.time_ns()
    try:
        yield
    finally:
        end = time.time_ns()
        for task in tasks:
            if tel.metrics is not None:
                tel.metrics.stage["generate"].observe((end - start) / 1e9)
            parent = _parent(tel, task.group_id) if tel.tracing else None
            if parent is not None:
                span = tel.tracer.start_span(
                    "rollout.generate",
                    context=parent,
                    start_time=start,
                    attributes={"rspo.group_id": task.group_id, "rspo.batch_groups": len(tasks), "rspo.n": int(task.n)},
                )
                span.end(end_time=end)


_REWARD_STATUS = {v.number: v.name.removeprefix("REWARD_STATUS_") for v in reward_pb2.RewardStatus.DESCRIPTOR.values}


async def traced_reward_call(group_id: str, call: Awaitable[list[reward_pb2.Reward]]) -> list[reward_pb2.Reward]:
    """Await one ScoreGroup call inside a `rollout.score` span (so the gRPC client span, and the
    reward server's span through metadata, are its children); count latency, statuses, errors."""
    tel = _STATE
    if tel is None or not tel.active:
        return await call
    token = _current_group.set(group_id)
    t0 = time.perf_counter()
    cm: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
    parent = _parent(tel, group_id) if tel.tracing else None
    if parent is not None:
        cm = tel.tracer.start_as_current_span("rollout.score", context=parent, attributes={"rspo.group_id": group_id})
    try:
        with cm:
            rewards = await call
    except Exception as err:
        if tel.metrics is not None:
            code = getattr(err, "code", None)  # RspoError.code, or AioRpcError.code()
            code = code() if callable(code) else code
            tel.metrics.reward_errors.labels(getattr(code, "name", None) or type(err).__name__).inc()
        raise
    finally:
        _current_group.reset(token)
        if tel.metrics is not None:
            dt = time.perf_counter() - t0
            tel.metrics.reward_seconds.observe(dt)
            tel.metrics.stage["score"].observe(dt)
    if tel.metrics is not None:
        for status, count in collections.Counter(int(r.status) for r in rewards).items():
            tel.metrics.reward_status.labels(_REWARD_STATUS.get(status, str(status))).inc(count)
    return rewards


async def timed_weight_fetch(call: Awaitable[tuple[int, dict[str, Any]]]) -> tuple[int, dict[str, Any]]:
    """Await a policy fetch; count its seconds and the bytes of the tensors it returned."""
    tel = _STATE
    if tel is None or tel.metrics is None:
        return await call
    t0 = time.perf_counter()
    version, state = await call
    tel.metrics.weight_sync_seconds.observe(time.perf_counter() - t0)
    tel.metrics.weight_sync_bytes.inc(sum(int(getattr(t, "nbytes", 0)) for t in state.values()))
    return version, state


def rollout_end(group: sample_pb2.SampleGroup) -> str | None:
    """Close the group's span before it is published; returns the `traceparent` for the groups entry."""
    tel = _STATE
    if tel is None or not tel.tracing:
        return None
    span = tel.open_groups.pop(group.group_id, None)
    if span is None:
        return None
    span.set_attribute("rspo.status", sample_pb2.GroupStatus.Name(group.status))
    if group.status == sample_pb2.GROUP_STATUS_DROPPED:
        span.set_status(Status(StatusCode.ERROR, group.drop_reason))
    tp = span_traceparent(span)
    span.end()
    return tp


@contextlib.contextmanager
def busy() -> Iterator[None]:
    """Time spent inside counts as busy (the rest of the wall time is idle)."""
    tel = _STATE
    if tel is None or tel.metrics is None:
        yield
        return
    t0 = time.perf_counter()
    try:
        yield
    finally:
        tel.metrics.add_busy(time.perf_counter() - t0)


# ---- hooks: learner --------------------------------------------------------------------------------
class Admissions:
    """Root spans of the groups being admitted; their `traceparents` go into the task entries."""

    def __init__(self, tel: Telemetry | None, count: int) -> None:
        self.spans: list[Span] = []
        if tel is not None and tel.tracing:
            root = Context()  # each admitted group starts its own trace
            self.spans = [
                tel.tracer.start_span("learner.admit", context=root, kind=SpanKind.PRODUCER) for _ in range(count)
            ]

    @property
    def traceparents(self) -> list[str | None] | None:
        return [span_traceparent(s) for s in self.spans] or None

    def end(self, tasks: Sequence[sample_pb2.PromptTask]) -> None:
        for span, task in zip(self.spans, tasks):
            span.set_attribute("rspo.group_id", task.group_id)
            span.set_attribute("rspo.dataset_index", int(task.dataset_index))
            span.set_attribute("rspo.admitted_at_step", int(task.admitted_at_step))
            span.end()


def admissions(count: int) -> Admissions:
    return Admissions(_STATE, count)


def learner_received(group: sample_pb2.SampleGroup, traceparent: str | None) -> None:
    """The learner read a (non-duplicate) group: its groups-queue wait, or its drop reason."""
    tel = _STATE
    if tel is None or not tel.active:
        return
    now = time.time_ns()
    if group.status != sample_pb2.GROUP_STATUS_COMPLETE:
        if tel.metrics is not None:
            from services.common.metrics import drop_category

            tel.metrics.groups_dropped.labels(drop_category(group.drop_reason)).inc()
        return
    if len(tel.received_ns) >= _MAX_OPEN:
        tel.received_ns.pop(next(iter(tel.received_ns)))
    tel.received_ns[group.group_id] = now
    scored = int(group.scored_unix_ns)
    if not scored:
        return
    if tel.metrics is not None:
        tel.metrics.stage["groups_queue"].observe(max(0, now - scored) / 1e9)
    if tel.tracing and is_sampled(traceparent):
        span = tel.tracer.start_span(
            "queue.groups",
            context=extract_context(traceparent),
            kind=SpanKind.CONSUMER,
            start_time=min(scored, now),
            attributes={"rspo.group_id": group.group_id},
        )
        span.end(end_time=now)


def learner_step(
    record: dict[str, Any],
    applied: Sequence[tuple[sample_pb2.SampleGroup, str | None]],
    started_monotonic: float,
) -> None:
    """After a step: export its record, per-group staleness (derived from the samples' policy versions)
    and stage latencies; `learner.step` + `learner.apply` spans."""
    tel = _STATE
    if tel is None or not tel.active:
        return
    now = time.time_ns()
    start = now - int(max(0.0, time.monotonic() - started_monotonic) * 1e9)
    m = tel.metrics
    if m is not None:
        m.set_learner(record)
        if "learner_busy_ratio" in record:
            m.set_idle(1.0 - float(record["learner_busy_ratio"]))
        # One observation per group (its samples share a policy version), as the metric's name says.
        trained = int(record.get("policy_version", 1)) - 1
        for group, _ in applied:
            m.staleness.observe(trained - min((int(x.policy_version) for x in group.samples), default=trained))
        for group, _ in applied:
            received = tel.received_ns.pop(group.group_id, None)
            if received is not None:
                m.stage["learner_wait"].observe(max(0, start - received) / 1e9)
            m.stage["learner_step"].observe((now - start) / 1e9)
            if group.task.admitted_unix_ns:
                m.stage["end_to_end"].observe(max(0, now - int(group.task.admitted_unix_ns)) / 1e9)
    else:
        for group, _ in applied:
            tel.received_ns.pop(group.group_id, None)
    if tel._tensorboard is not None:
        step = int(record.get("step", 0))
        for key, value in record.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                tel._tensorboard.add_scalar(key, value, step)
    if not tel.tracing:
        return
    applied = [(group, tp) for group, tp in applied if is_sampled(tp)]
    links = [ln for _, tp in applied if (ln := _link(tp)) is not None]
    step_attrs = {
        "rspo.step": int(record.get("step", 0)),
        "rspo.groups": len(applied),
        "rspo.loss": float(record.get("loss/loss", 0.0)),
        "rspo.grad_norm": float(record.get("grad_norm", 0.0)),
    }
    step_span = tel.tracer.start_span(
        "learner.step", context=Context(), links=links, start_time=start, attributes=step_attrs
    )
    step_link = [Link(step_span.get_span_context())]
    # The version the step trained (the record holds the one it published, one higher).
    trained_version = int(record.get("policy_version", 1)) - 1
    for group, tp in applied:
        stale = trained_version - min((int(s.policy_version) for s in group.samples), default=trained_version)
        span = tel.tracer.start_span(
            "learner.apply",
            context=extract_context(tp),
            links=step_link,
            start_time=start,
            attributes={"rspo.group_id": group.group_id, "rspo.step": step_attrs["rspo.step"], "rspo.staleness": stale},
        )
        span.end(end_time=now)
    step_span.end(end_time=now)
