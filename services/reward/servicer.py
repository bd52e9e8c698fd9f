"""Thin async gRPC servicer for `rspo.v1.RewardService`: convert nothing, delegate, map errors."""

from __future__ import annotations

import grpc

from rspo_proto.v1 import reward_pb2, reward_pb2_grpc
from services.common.grpc_server import rpc_errors
from services.reward.worker import RewardWorker

SERVICE_NAME = reward_pb2.DESCRIPTOR.services_by_name["RewardService"].full_name


class RewardServicer(reward_pb2_grpc.RewardServiceServicer):
    def __init__(self, worker: RewardWorker) -> None:
        self.worker = worker

    @rpc_errors
    async def ScoreGroup(
        self, request: reward_pb2.ScoreGroupRequest, context: grpc.aio.ServicerContext
    ) -> reward_pb2.ScoreGroupResponse:
        return await self.worker.score_group(request)

    @rpc_errors
    async def ScoreBatch(
        self, request: reward_pb2.ScoreBatchRequest, context: grpc.aio.ServicerContext
    ) -> reward_pb2.ScoreBatchResponse:
        return await self.worker.score_batch(request)
