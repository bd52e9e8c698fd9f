"""End-to-end pipeline throughput with generation and scoring replaced by no-op stand-ins.

Groups of n=16 samples x 512 tokens with logprobs flow through the real system: the learner's
admission (Redis XADD), rollout workers (real `RolloutWorker`: XREADGROUP, weight-version check,
scoring over real gRPC to a reward server process, MULTI{XADD group; XACK task}), and the learner's
consumer (XREADGROUP, parse + validate, XACK after its "step"). Only the model forward/backward and
the scorer are no-ops. Baseline in the same run: the raw transport floor in one process (protobuf
encode + XADD + XREADGROUP + decode + XACK of the same payloads).

Usage: python bench/bench_pipeline.py [--groups 2000] [--rollout-procs 1]
Writes bench/results/pipeline.{json,md}. Targets: >= 300 groups/s end to end, >= 0.5x the raw baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import grpc
import redis.asyncio as aioredis
import torch
from benchlib import write_results

from rspo_proto.v1 import reward_pb2, reward_pb2_grpc, sample_pb2
from services.common.config import RspoConfig, parse_config
from services.common.grpc_server import channel_options, start_server
from services.common.redis_server import EmbeddedRedis, free_port
from services.common.streams import connect
from services.learner.worker import LearnerRuntime, LearnerWorker
from services.rollout.backends.base import Generation, GenerationBackend, SamplingSettings
from services.rollout.worker import RolloutWorker
from services.tasks import get_family

N, TOKENS = 16, 512


class NoopBackend(GenerationBackend):
    """Returns canned 512-token responses with logprobs: generation costs ~nothing."""

    def __init__(self) -> None:
        self._gen = Generation(list(range(3, 3 + TOKENS)), [-1.25] * TOKENS, "7", "length")
        self._version = 0

    def generate(self, prompt_token_ids: list[list[int]], n: int, settings: SamplingSettings) -> list[list[Generation]]:
        return [[self._gen] * n for _ in prompt_token_ids]

    def encode(self, text: str) -> list[int]:
        return [1, *range(4, 4 + len(text.split()))]

    def decode(self, token_ids: list[int]) -> str:
        return "7"

    @property
    def eos_token_ids(self) -> frozenset[int]:
        return frozenset({2})

    @property
    def policy_version(self) -> int:
        return self._version

    def load_state_dict(self, state: Any, version: int) -> None:
        self._version = version

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}


class NoopReward(reward_pb2_grpc.RewardServiceServicer):
    async def ScoreGroup(self, request: Any, context: Any) -> reward_pb2.ScoreGroupResponse:
        ok = reward_pb2.Reward(value=1.0, status=reward_pb2.REWARD_STATUS_OK)
        return reward_pb2.ScoreGroupResponse(group_id=request.group_id, rewards=[ok] * len(request.responses))

    async def ScoreBatch(self, request: Any, context: Any) -> reward_pb2.ScoreBatchResponse:
        return reward_pb2.ScoreBatchResponse(groups=[await self.ScoreGroup(g, context) for g in request.groups])


def bench_config(redis_url: str, reward_port: int, groups: int) -> RspoConfig:
    return parse_config(
        {
            "run": {"run_id": "bench"},
            "redis": {"url": redis_url, "block_ms": 100},
            "task": {"n": N, "k": 4},
            "rollout": {"reward_address": f"127.0.0.1:{reward_port}", "tasks_per_read": 64},
            "learner": {"total_steps": groups // 64, "groups_per_step": 64, "max_staleness": 3},
        },
        env={},
    )


def reward_process(port: int, ready: Any) -> None:
    async def main() -> None:
        handle = await start_server(
            host="127.0.0.1",
            port=port,
            service_names=["rspo.v1.RewardService"],
            max_message_bytes=64 << 20,
            register=lambda s: reward_pb2_grpc.add_RewardServiceServicer_to_server(NoopReward(), s),
        )
        ready.set()
        await handle.server.wait_for_termination()  # holding the handle keeps the server alive

    asyncio.run(main())


def rollout_process(cfg_json: str, replica: str) -> None:
    cfg = RspoConfig.model_validate_json(cfg_json)

    async def main() -> None:
        channel = grpc.aio.insecure_channel(cfg.rollout.reward_address, options=channel_options(64 << 20))
        stub = reward_pb2_grpc.RewardServiceStub(channel)

        async def score(task: sample_pb2.PromptTask, texts: list[str]) -> list[reward_pb2.Reward]:
            req = reward_pb2.ScoreGroupRequest(group_id=task.group_id, task=task.task, responses=texts)
            return list((await stub.ScoreGroup(req, timeout=10)).rewards)

        async def fetch(version: int) -> tuple[int, dict[str, torch.Tensor]]:
            return 1, {}

        worker = RolloutWorker(cfg, connect(cfg.redis), NoopBackend(), score, fetch, replica)
        await worker.run(asyncio.Event())

    asyncio.run(main())


class NoopStepLearner(LearnerWorker):
    """The real learner loop (admission, accept, ack after 'checkpoint'), minus the model update."""

    first_step_at: float | None = None
    groups_at_first_step = 0

    async def step(self) -> dict[str, Any]:
        if self.first_step_at is None:  # steady state starts here: start-up and warm-up excluded
            self.first_step_at = time.perf_counter()
            self.groups_at_first_step = self.state.groups_applied
        take, self.buffer = (
            self.buffer[: self.cfg.learner.groups_per_step],
            self.buffer[self.cfg.learner.groups_per_step :],
        )
        for p in take:
            self._resolve(p.group.group_id, p.delivery.entry_id)
        self.state.step += 1
        self.state.groups_applied += len(take)
        await self.queue.ack(self.unacked)
        self.unacked = []
        return {}

    async def restore(self) -> None:
        await super().restore()


async def end_to_end(cfg: RspoConfig, tmp: Path) -> float:
    model = torch.nn.Linear(2, 2)
    runtime = LearnerRuntime(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        encode=NoopBackend().encode,
        pad_id=0,
        task=get_family("max_digit"),
        device=torch.device("cpu"),
    )
    learner = NoopStepLearner(cfg, tmp, connect(cfg.redis), runtime, lambda v, m: None)
    await learner.restore()
    await learner.run(asyncio.Event())
    elapsed = time.perf_counter() - (learner.first_step_at or 0.0)
    await learner.client.aclose()
    return (learner.state.groups_applied - learner.groups_at_first_step) / elapsed


def sample_group(i: int) -> sample_pb2.SampleGroup:
    gen = NoopBackend()._gen
    task = sample_pb2.PromptTask(group_id=f"raw/{i}", prompt_token_ids=[1, 4, 5, 6], n=N, k=4, prompt_text="1 2 3 =")
    samples = [
        sample_pb2.Sample(
            token_ids=gen.token_ids,
            logprobs=gen.logprobs,
            text=gen.text,
            policy_version=1,
            reward=reward_pb2.Reward(value=1.0, status=reward_pb2.REWARD_STATUS_OK),
        )
        for _ in range(N)
    ]
    return sample_pb2.SampleGroup(group_id=task.group_id, task=task, samples=samples)


async def raw_baseline(redis_url: str, groups: int) -> float:
    """One process: encode + XADD, XREADGROUP + decode + XACK of the same payloads, batched like the system."""
    client = aioredis.Redis.from_url(redis_url)
    stream = "raw:groups"
    await client.xgroup_create(stream, "g", id="0", mkstream=True)
    template = sample_group(0)
    t0 = time.perf_counter()
    done = 0
    while done < groups:
        batch = min(64, groups - done)
        async with client.pipeline(transaction=False) as pipe:
            for i in range(batch):
                template.group_id = f"raw/{done + i}"
                pipe.xadd(stream, {"data": template.SerializeToString()})
            await pipe.execute()
        resp: Any = await client.xreadgroup("g", "c", {stream: ">"}, count=batch)
        ids = []
        for _, entries in resp:
            for eid, fields in entries:
                sample_pb2.SampleGroup.FromString(fields[b"data"])
                ids.append(eid)
        await client.xack(stream, "g", *ids)
        done += batch
    elapsed = time.perf_counter() - t0
    await client.aclose()
    return groups / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--groups", type=int, default=4096)
    parser.add_argument("--rollout-procs", type=int, default=1)
    args = parser.parse_args()
    ctx = mp.get_context("spawn")
    with EmbeddedRedis() as redis_srv:
        raw = asyncio.run(raw_baseline(redis_srv.url, args.groups))
        port = free_port()
        ready = ctx.Event()
        reward = ctx.Process(target=reward_process, args=(port, ready), daemon=True)
        reward.start()
        if not ready.wait(180):
            raise RuntimeError("no-op reward server did not start within 180 s")
        cfg = bench_config(redis_srv.url, port, args.groups)
        tmp = Path(redis_srv.data_dir) / "run"
        tmp.mkdir(parents=True, exist_ok=True)
        rollouts = [
            ctx.Process(target=rollout_process, args=(cfg.model_dump_json(), f"r{i}"), daemon=True)
            for i in range(args.rollout_procs)
        ]
        for p in rollouts:
            p.start()
        e2e = asyncio.run(end_to_end(cfg, tmp))
        for p in [*rollouts, reward]:
            p.terminate()
            p.join(5)
    payload = len(sample_group(0).SerializeToString())
    ratio = e2e / raw
    lines = [
        f"## Pipeline throughput (n={N} samples x {TOKENS} tokens with logprobs; {payload / 1024:.0f} KiB per group)",
        "",
        "| path | groups/s | ratio |",
        "|---|---|---|",
        f"| raw baseline: encode + XADD + XREADGROUP + decode + XACK, one process | {raw:.0f} | 1.00x |",
        f"| end to end: learner -> Redis -> rollout ({args.rollout_procs} proc) -> gRPC reward -> Redis -> learner "
        f"| {e2e:.0f} | {ratio:.2f}x |",
        "",
        f"{args.groups} groups. Targets: >= 300 groups/s end to end and >= 0.5x the raw baseline.",
    ]
    print("\n".join(lines))
    write_results(
        "pipeline",
        {
            "groups": args.groups,
            "raw_groups_per_s": raw,
            "e2e_groups_per_s": e2e,
            "ratio": ratio,
            "payload_bytes": payload,
            "rollout_procs": args.rollout_procs,
        },
        "\n".join(lines),
    )


if __name__ == "__main__":
    main()
