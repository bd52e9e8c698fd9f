"""Overhead of tracing + metrics on the no-op pipeline: telemetry off vs on, same machine, same run.

The pipeline is the real system minus the model: learner admission (XADD with `traceparent`), a real
`RolloutWorker` (XREADGROUP, generation by a no-op backend, scoring over real gRPC to a no-op reward
server with the telemetry interceptors, MULTI{XADD group; XACK task}) and the learner's consumer (parse,
validate, ack after a no-op "step" that calls the telemetry step hook). The stand-ins (`NoopBackend`,
`NoopReward`, `bench_config`) come from bench/bench_pipeline.py; everything runs in one process on one
event loop, so every hook's cost lands on the measured path (a worst case for a 2-core machine).

Each variant runs in a fresh child process (telemetry is per process), variants alternate, and the
median over repeats is compared. "on" = file exporter (JSONL spans, every group traced) + Prometheus
metrics served on a port and scraped once a second during the run.

Usage: python bench/bench_telemetry.py [--groups 1024] [--repeats 3]
Writes bench/results/telemetry_overhead.{json,md}. Target: throughput loss under 5%.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import write_results

# variant -> (exporter, trace_sample_ratio, metrics on)
VARIANTS: dict[str, tuple[str, float, bool]] = {
    "off": ("none", 1.0, False),
    "metrics": ("none", 1.0, True),
    "traces_10pct+metrics": ("file", 0.1, True),
    "traces_all+metrics": ("file", 1.0, True),
}
LABELS = {
    "off": "off (exporter none, no metrics port)",
    "metrics": "Prometheus metrics only (scraped 1/s)",
    "traces_10pct+metrics": "metrics + traces of 10% of groups (trace_sample_ratio 0.1, file exporter)",
    "traces_all+metrics": "metrics + traces of every group (file exporter)",
}


async def _pipeline(groups: int, variant: str, tmp: Path) -> dict[str, Any]:
    import grpc
    import torch
    from bench_pipeline import NoopBackend, NoopReward, bench_config

    from rspo_proto.v1 import reward_pb2, reward_pb2_grpc, sample_pb2
    from services.common import telemetry
    from services.common.config import TelemetryConfig
    from services.common.grpc_server import channel_options, start_server
    from services.common.redis_server import EmbeddedRedis, free_port
    from services.common.streams import connect
    from services.learner.worker import LearnerRuntime, LearnerWorker
    from services.rollout.worker import RolloutWorker
    from services.tasks import get_family

    exporter, ratio, metrics_on = VARIANTS[variant]
    tcfg = TelemetryConfig(
        exporter=exporter,  # type: ignore[arg-type]
        file_path=str(tmp / "spans.jsonl"),
        trace_sample_ratio=ratio,
        metrics_port=free_port() if metrics_on else None,
    )
    tel = telemetry.setup_telemetry("bench", tcfg)

    class TracedStepLearner(LearnerWorker):
        """The real learner loop (admission, accept, ack after 'checkpoint'), minus the model update."""

        async def step(self) -> dict[str, Any]:
            t0 = time.monotonic()
            gps = self.cfg.learner.groups_per_step
            take, self.buffer = self.buffer[:gps], self.buffer[gps:]
            for p in take:
                self._resolve(p.group.group_id, p.delivery.entry_id)
            self.state.step += 1
            self.state.groups_applied += len(take)
            await self.queue.ack(self.unacked)
            self.unacked = []
            record = {"step": self.state.step, "loss/loss": 0.0, "grad_norm": 0.0, "learner_busy_ratio": 0.5}
            telemetry.learner_step(record, [(p.group, p.delivery.traceparent) for p in take], t0)
            return record

    with EmbeddedRedis(tmp / "redis") as redis_srv:
        cfg = bench_config(redis_srv.url, 0, groups)
        handle = await start_server(
            host="127.0.0.1",
            port=0,
            service_names=["rspo.v1.RewardService"],
            max_message_bytes=64 << 20,
            register=lambda s: reward_pb2_grpc.add_RewardServiceServicer_to_server(NoopReward(), s),
        )
        channel = grpc.aio.insecure_channel(handle.address, options=channel_options(64 << 20))
        stub = reward_pb2_grpc.RewardServiceStub(channel)

        async def call(task: sample_pb2.PromptTask, texts: list[str]) -> list[reward_pb2.Reward]:
            req = reward_pb2.ScoreGroupRequest(group_id=task.group_id, task=task.task, responses=texts)
            return list((await stub.ScoreGroup(req, timeout=10)).rewards)

        async def score(task: sample_pb2.PromptTask, texts: list[str]) -> list[reward_pb2.Reward]:
            return await telemetry.traced_reward_call(task.group_id, call(task, texts))  # as rollout/main.py

        async def fetch(version: int) -> tuple[int, dict[str, torch.Tensor]]:
            return 1, {}

        rollout = RolloutWorker(cfg, connect(cfg.redis), NoopBackend(), score, fetch, "r0")
        tel.watch_rollout(rollout.counters)
        tel.watch_queues(cfg)
        model = torch.nn.Linear(2, 2)
        runtime = LearnerRuntime(
            model=model,
            optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
            encode=NoopBackend().encode,
            pad_id=0,
            task=get_family("max_digit"),
            device=torch.device("cpu"),
        )
        learner = TracedStepLearner(cfg, tmp, connect(cfg.redis), runtime, lambda v, m: None)
        await learner.restore()
        stop = asyncio.Event()
        scrapes = [0]
        done = threading.Event()

        def scraper() -> None:  # a Prometheus server scraping once a second
            while not done.wait(1.0):
                if tel.metrics is not None and tel.metrics.port:
                    urllib.request.urlopen(f"http://127.0.0.1:{tel.metrics.port}/metrics", timeout=5).read()
                    scrapes[0] += 1

        threading.Thread(target=scraper, daemon=True).start()
        rollout_task = asyncio.create_task(rollout.run(stop))
        t0 = time.perf_counter()
        await learner.run(asyncio.Event())
        elapsed = time.perf_counter() - t0
        done.set()
        stop.set()
        await rollout_task
        await channel.close()
        await handle.server.stop(0)
        await learner.client.aclose()
        await rollout.client.aclose()
    telemetry.shutdown_telemetry()
    spans = len(telemetry.load_spans(tmp / "spans.jsonl"))
    return {"groups_per_s": learner.state.groups_applied / elapsed, "spans": spans, "scrapes": scrapes[0]}


def child(variant: str, groups: int, tmp: str) -> None:
    out = asyncio.run(_pipeline(groups, variant, Path(tmp)))
    print("RESULT " + json.dumps(out), flush=True)


def run_variant(variant: str, groups: int, tmp: Path) -> dict[str, Any]:
    tmp.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, __file__, "--child", variant, "--groups", str(groups), "--tmp", str(tmp)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])  # type: ignore[no-any-return]
    raise RuntimeError(f"{variant} run failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--groups", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", choices=list(VARIANTS), default=None)
    parser.add_argument("--tmp", default=None)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.groups, args.tmp)
        return
    import tempfile

    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    names = list(VARIANTS)
    with tempfile.TemporaryDirectory() as tmp:
        run_variant("off", max(128, args.groups // 8), Path(tmp) / "warmup")  # warm caches, not measured
        for i in range(args.repeats):
            order = names if i % 2 == 0 else names[::-1]
            for v in order:
                r = run_variant(v, args.groups, Path(tmp) / f"{v}{i}")
                runs[v].append(r)
                print(f"repeat {i} {v}: {r['groups_per_s']:.1f} groups/s ({r['spans']} spans, {r['scrapes']} scrapes)")
    med = {v: statistics.median(r["groups_per_s"] for r in runs[v]) for v in VARIANTS}
    lines = [
        "## Telemetry overhead on the no-op pipeline (one process: learner + rollout + gRPC reward + Redis)",
        "",
        "| telemetry | groups/s (median) | runs | spans/group | ratio | overhead |",
        "|---|---|---|---|---|---|",
    ]
    for v in VARIANTS:
        spans = statistics.median(r["spans"] for r in runs[v]) / args.groups
        each = ", ".join(f"{r['groups_per_s']:.0f}" for r in runs[v])
        lines.append(
            f"| {LABELS[v]} | {med[v]:.1f} | {each} | "
            f"{spans:.1f} | {med[v] / med['off']:.3f}x | {(1 - med[v] / med['off']) * 100:.1f}% |"
        )
    lines += [
        "",
        f"{args.groups} groups per run (n=16 samples x 512 tokens), {args.repeats} repeats in alternating order, "
        "each run in a fresh process. Target: overhead under 5%.",
    ]
    print("\n".join(lines))
    write_results(
        "telemetry_overhead",
        {
            "groups": args.groups,
            "repeats": args.repeats,
            "variants": {
                v: {
                    "config": dict(zip(("exporter", "trace_sample_ratio", "metrics"), VARIANTS[v])),
                    "groups_per_s": [r["groups_per_s"] for r in runs[v]],
                    "median_groups_per_s": med[v],
                    "ratio_to_off": med[v] / med["off"],
                    "overhead_fraction": 1 - med[v] / med["off"],
                    "spans": [r["spans"] for r in runs[v]],
                }
                for v in VARIANTS
            },
            "target_overhead_fraction": 0.05,
        },
        "\n".join(lines),
    )


if __name__ == "__main__":
    main()
