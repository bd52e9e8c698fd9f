"""Reward service throughput and latency: exact-match scoring of groups of 16 over real gRPC on
loopback (the service in its own process) next to calling the same scorer in-process, plus
sandboxed code scorings per second.

Writes bench/results/reward.{json,md}. Run: `.venv/bin/python bench/bench_reward.py` (< 2 min).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from services.common.config import RetryConfig, RewardConfig, ScorerSpec  # noqa: E402
from services.reward.client import RewardClient  # noqa: E402
from services.reward.sandbox import detect_isolation  # noqa: E402
from services.reward.scorers import CombinedScorer, ScoreRequest  # noqa: E402

RESULTS = ROOT / "bench" / "results"
GROUP = 16
REFERENCE = {"answer": "the answer is 42"}
RESPONSES = [("the answer is 42" if i % 3 == 0 else f"the answer is {i}") for i in range(GROUP)]

SERVER = """
import asyncio
from services.common.config import parse_config
from services.reward.main import serve
cfg = parse_config({"reward": {"port": 0, "reflection": False, "max_concurrent_groups": 1024,
                               "scorers": [{"kind": "exact"}]}}, env={})
asyncio.run(serve(cfg, ready=lambda port: print("LISTENING", port, flush=True)))
"""


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(latencies_s: list[float], wall_s: float) -> dict[str, float]:
    ms = [v * 1e3 for v in latencies_s]
    return {
        "calls": len(ms),
        "groups_per_s": len(ms) / wall_s,
        "responses_per_s": len(ms) * GROUP / wall_s,
        "p50_ms": statistics.median(ms),
        "p99_ms": pct(ms, 0.99),
    }


async def bench_in_process(calls: int) -> dict[str, float]:
    scorer = CombinedScorer(RewardConfig(scorers=[ScorerSpec(kind="exact")]))
    request = ScoreRequest("g", "t", "p", REFERENCE, RESPONSES)
    lat: list[float] = []
    start = time.perf_counter()
    for _ in range(calls):
        t = time.perf_counter()
        await scorer.score_group(request)
        lat.append(time.perf_counter() - t)
    return summary(lat, time.perf_counter() - start)


async def bench_grpc(address: str, calls: int, concurrency: int) -> dict[str, float]:
    reference_json = json.dumps(REFERENCE)
    lat: list[float] = []
    async with RewardClient(address, 10.0, RetryConfig(), 4 << 20) as client:
        await client.score_group("warm", "t", "p", reference_json, RESPONSES)

        async def one_worker(worker: int) -> None:
            for i in range(calls // concurrency):
                t = time.perf_counter()
                await client.score_group(f"g-{worker}-{i}", "t", "p", reference_json, RESPONSES)
                lat.append(time.perf_counter() - t)

        start = time.perf_counter()
        await asyncio.gather(*(one_worker(w) for w in range(concurrency)))
        return summary(lat, time.perf_counter() - start)


async def bench_sandbox(responses: int) -> dict[str, Any]:
    scorer = CombinedScorer(RewardConfig(scorers=[ScorerSpec(kind="code", options={"wall_s": 10.0})]))
    reference = {"tests": ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"]}
    code = "def add(a, b):\n    return a + b\n"
    request = ScoreRequest("g", "code", "p", reference, [code] * responses)
    await scorer.score_group(ScoreRequest("g", "code", "p", reference, [code]))  # probe isolation, warm up
    start = time.perf_counter()
    results = await scorer.score_group(request)
    wall = time.perf_counter() - start
    assert all(r.ok and r.value == 1.0 for r in results), results[:2]
    iso = detect_isolation()
    return {
        "scorings": responses,
        "scorings_per_s": responses / wall,
        "wall_s": wall,
        "concurrency": os.cpu_count(),
        "isolation": iso.name,
        "sandbox_python": iso.python,
    }


def start_server() -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-c", SERVER], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("LISTENING"):
        proc.kill()
        raise RuntimeError(f"reward server did not start: {line!r}")
    return proc, f"127.0.0.1:{line.split()[1]}"


def machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }


def markdown(data: dict[str, Any]) -> str:
    m, rows = data["machine"], []
    for name in ("in_process", "grpc_sequential", "grpc_concurrent"):
        r = data[name]
        rows.append(
            f"| {name} | {r['calls']} | {r['groups_per_s']:.0f} | {r['responses_per_s']:.0f} | "
            f"{r['p50_ms']:.3f} | {r['p99_ms']:.3f} |"
        )
    s = data["sandbox"]
    return "\n".join(
        [
            "# Reward service benchmark",
            "",
            f"Machine: {m['processor']} ({m['platform']}), {m['cpu_count']} CPUs, Python {m['python']}.",
            f"Exact-match scoring of groups of {GROUP} responses. gRPC: the service in its own process on",
            "loopback, called with `RewardClient`; in-process: the same `CombinedScorer` called directly.",
            "",
            "| mode | calls | groups/s | responses/s | p50 ms | p99 ms |",
            "|---|---|---|---|---|---|",
            *rows,
            "",
            f"gRPC sequential / in-process p50 latency ratio: **{data['ratio_p50_latency']:.1f}x**; "
            f"in-process / gRPC-concurrent throughput ratio: **{data['ratio_throughput']:.1f}x**.",
            "",
            f"Sandboxed code scoring (2 assert tests per response, isolation `{s['isolation']}`, "
            f"{s['concurrency']} concurrent sandboxes): **{s['scorings_per_s']:.1f} scorings/s** "
            f"({s['scorings']} in {s['wall_s']:.2f} s).",
        ]
    )


async def main(args: argparse.Namespace) -> None:
    data: dict[str, Any] = {"machine": machine(), "group_size": GROUP}
    data["in_process"] = await bench_in_process(args.calls)
    proc, address = start_server()
    try:
        data["grpc_sequential"] = await bench_grpc(address, args.calls, 1)
        data["grpc_concurrent"] = await bench_grpc(address, args.calls, args.concurrency)
    finally:
        proc.terminate()
        proc.wait(10)
    data["ratio_p50_latency"] = data["grpc_sequential"]["p50_ms"] / data["in_process"]["p50_ms"]
    data["ratio_throughput"] = data["in_process"]["groups_per_s"] / data["grpc_concurrent"]["groups_per_s"]
    data["sandbox"] = await bench_sandbox(args.sandbox_scorings)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "reward.json").write_text(json.dumps(data, indent=2) + "\n")
    (RESULTS / "reward.md").write_text(markdown(data) + "\n")
    print(markdown(data))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--sandbox-scorings", type=int, default=64)
    asyncio.run(main(parser.parse_args()))
