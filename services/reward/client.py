"""The client the rollout service uses to score groups on the reward service.

Each attempt has its own deadline (`timeout_s`); retryable failures (UNAVAILABLE,
DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ABORTED) are retried with jittered backoff
per `RetryConfig`; anything else, or the last failure, is raised as a taxonomy
error (`services.common.errors`). A response whose reward count differs from the
number of responses is `InvalidInput`. Per-response statuses are returned as they
are: deciding to retry or drop a group with non-OK rewards is the caller's job.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from rspo_proto.v1 import reward_pb2, reward_pb2_grpc
from services.common.config import RetryConfig
from services.common.errors import InvalidInput, RspoError
from services.common.grpc_server import channel_options
from services.common.retry import call_with_retry


class RewardClient:
    def __init__(self, address: str, timeout_s: float, retry: RetryConfig, max_message_bytes: int) -> None:
        self.address = address
        self.timeout_s = timeout_s
        self.retry = retry
        self.channel = grpc.aio.insecure_channel(address, options=channel_options(max_message_bytes))
        self.stub = reward_pb2_grpc.RewardServiceStub(self.channel)
        self.retries = 0  # attempts retried over this client's life (for metrics)

    def _count_retry(self, attempt: int, err: RspoError) -> None:
        self.retries += 1

    async def score_group(
        self, group_id: str, task: str, prompt: str, reference_json: str, responses: Sequence[str]
    ) -> list[reward_pb2.Reward]:
        request = reward_pb2.ScoreGroupRequest(
            group_id=group_id, task=task, prompt=prompt, reference_json=reference_json, responses=list(responses)
        )

        async def attempt() -> reward_pb2.ScoreGroupResponse:
            response: reward_pb2.ScoreGroupResponse = await self.stub.ScoreGroup(request, timeout=self.timeout_s)
            return response

        response = await call_with_retry(attempt, self.retry, on_retry=self._count_retry)
        if len(response.rewards) != len(responses):
            raise InvalidInput(
                f"reward service at {self.address} returned {len(response.rewards)} rewards for "
                f"{len(responses)} responses (group {group_id})"
            )
        return list(response.rewards)

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> RewardClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
