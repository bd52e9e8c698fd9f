"""`rspo serve rollout`: a generation backend, a reward client, the task loop and the gRPC server."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

import grpc

from rspo_proto.v1 import reward_pb2, rollout_pb2, rollout_pb2_grpc, sample_pb2
from services.common import telemetry
from services.common.config import RspoConfig
from services.common.grpc_server import ServerHandle, channel_options, start_server
from services.common.lifecycle import install_stop_signals, run_service
from services.common.retry import call_with_retry
from services.common.streams import connect, default_consumer_name
from services.common.weights import fetch_weights
from services.reward.client import RewardClient
from services.rollout.backends.base import make_backend
from services.rollout.servicer import RolloutServicer
from services.rollout.worker import RolloutWorker

log = logging.getLogger(__name__)

SERVICE_NAME = rollout_pb2.DESCRIPTOR.services_by_name["RolloutService"].full_name


async def start(cfg: RspoConfig) -> tuple[ServerHandle, RolloutWorker]:
    rc = cfg.rollout
    cache = Path(cfg.run.run_dir) / "model"
    backend = await asyncio.to_thread(make_backend, cfg.model, rc.backend, cache)
    reward = RewardClient(rc.reward_address, rc.reward_timeout_s, rc.reward_retry, rc.max_message_bytes)
    learner_channel = grpc.aio.insecure_channel(rc.learner_address, options=channel_options(rc.max_message_bytes))

    async def score(task: sample_pb2.PromptTask, texts: list[str]) -> list[reward_pb2.Reward]:
        return await telemetry.traced_reward_call(
            task.group_id,
            reward.score_group(task.group_id, task.task, task.prompt_text, task.reference_json, texts),
        )

    async def fetch(version: int) -> tuple[int, dict]:  # type: ignore[type-arg]
        # A learner restart makes fetches fail for a moment: retry (bounded), then fail loudly.
        return await telemetry.timed_weight_fetch(
            call_with_retry(lambda: fetch_weights(learner_channel, version, rc.weights_timeout_s), rc.weights_retry)
        )

    replica = rc.replica_id or default_consumer_name()
    worker = RolloutWorker(cfg, connect(cfg.redis), backend, score, fetch, replica)
    telemetry.get_telemetry().watch_rollout(worker.counters)
    servicer = RolloutServicer(worker, rc.backend, cfg.model.name_or_path)
    handle = await start_server(
        host=rc.host,
        port=rc.port,
        register=lambda s: rollout_pb2_grpc.add_RolloutServiceServicer_to_server(servicer, s),
        service_names=[SERVICE_NAME],
        max_message_bytes=rc.max_message_bytes,
        reflection_enabled=rc.reflection,
    )
    return handle, worker


async def serve(cfg: RspoConfig, ready: Callable[[ServerHandle], None] | None = None) -> None:
    stop = asyncio.Event()
    install_stop_signals(stop)
    handle, worker = await start(cfg)
    if ready:
        ready(handle)
    try:
        await run_service(handle, worker.run, stop, cfg.rollout.drain_timeout_s)
    finally:
        await worker.client.aclose()
