"""Thin RolloutService servicer: direct generation (for eval) and status."""

from __future__ import annotations

import asyncio

import grpc

from rspo_proto.v1 import rollout_pb2, rollout_pb2_grpc
from services.common.errors import InvalidInput
from services.common.grpc_server import rpc_errors
from services.rollout.backends.base import SamplingSettings
from services.rollout.worker import RolloutWorker, build_group

MAX_SAMPLES_PER_CALL = 65_536


class RolloutServicer(rollout_pb2_grpc.RolloutServiceServicer):
    def __init__(self, worker: RolloutWorker, backend_name: str, model_name: str) -> None:
        self.worker = worker
        self.backend_name = backend_name
        self.model_name = model_name

    @rpc_errors
    async def Generate(
        self, request: rollout_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> rollout_pb2.GenerateResponse:
        tasks = list(request.tasks)
        if not tasks:
            raise InvalidInput("GenerateRequest has no tasks")
        if sum(t.n for t in tasks) > MAX_SAMPLES_PER_CALL:
            raise InvalidInput(f"at most {MAX_SAMPLES_PER_CALL} samples per call; split the request")
        p = request.params
        defaults = self.worker.settings
        settings = SamplingSettings(
            max_new_tokens=p.max_new_tokens or defaults.max_new_tokens,
            temperature=p.temperature or defaults.temperature,
            top_p=p.top_p or defaults.top_p,
            seed=p.seed or None,
        )
        for i, t in enumerate(tasks):
            if t.n < 1 or not t.prompt_token_ids:
                raise InvalidInput(f"task {i} needs n >= 1 and prompt_token_ids")
        version = self.worker.backend.policy_version
        groups = []
        for t in tasks:
            # In a thread: generation is long and must not stall the server's event loop.
            gens = (await asyncio.to_thread(self.worker.backend.generate, [list(t.prompt_token_ids)], t.n, settings))[0]
            groups.append(build_group(t, gens, version, self.worker.replica))
        return rollout_pb2.GenerateResponse(groups=groups)

    @rpc_errors
    async def GetStatus(
        self, request: rollout_pb2.RolloutStatusRequest, context: grpc.aio.ServicerContext
    ) -> rollout_pb2.RolloutStatus:
        c = self.worker.counters
        return rollout_pb2.RolloutStatus(
            replica=self.worker.replica,
            policy_version=self.worker.backend.policy_version,
            groups_published=c.groups_published,
            groups_dropped=c.groups_dropped,
            backend=self.backend_name,
            model=self.model_name,
        )
