"""The scoring engine behind the reward service: validate, bound, time-limit, score.

- Validation (-> INVALID_ARGUMENT): group_id present, task known to some scorer,
  1..max_responses_per_group responses, reference_json a JSON object; a request
  larger than max_message_bytes -> RESOURCE_EXHAUSTED (gRPC enforces the same limit
  on the wire; this covers in-process callers and batches).
- Admission: at most `max_concurrent_groups` groups are scored at once; a group
  beyond that is refused at once with `Overloaded` (RESOURCE_EXHAUSTED, retryable)
  rather than queued, so a client's deadline is spent on backoff it controls.
- Each group gets `score_timeout_s`; when it runs out every response is TIMEOUT
  (the scorers' work is cancelled, sandboxes are killed).
The worker is stateless between calls, so replicas scale horizontally.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from typing import Any

from rspo_proto.v1 import reward_pb2
from services.common.config import RewardConfig
from services.common.errors import InvalidInput, Overloaded, PayloadTooLarge
from services.reward.scorers import CombinedScorer, ScoreRequest, ScoreResult, Status
from services.reward.scorers.base import fail_all

log = logging.getLogger(__name__)


def parse_reference(raw: str) -> dict[str, Any]:
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as err:
        raise InvalidInput(f"reference_json is not valid JSON: {err}") from None
    if not isinstance(value, dict):
        raise InvalidInput(f"reference_json must be a JSON object, not {type(value).__name__}")
    return value


def to_proto(result: ScoreResult) -> reward_pb2.Reward:
    return reward_pb2.Reward(
        value=result.value if result.ok else 0.0,
        status=reward_pb2.RewardStatus.ValueType(int(result.status)),
        message=result.message,
        components=result.components,
    )


class RewardWorker:
    def __init__(self, cfg: RewardConfig) -> None:
        self.cfg = cfg
        self.scorer = CombinedScorer(cfg)
        self.in_flight = 0
        # Counters for logs/metrics: groups by outcome, rewards by status.
        self.stats: Counter[str] = Counter()

    def validate(self, req: reward_pb2.ScoreGroupRequest) -> ScoreRequest:
        if not req.group_id:
            raise InvalidInput("group_id is empty; every group needs its deterministic id")
        if not req.task:
            raise InvalidInput("task is empty; name the task family that scores this group")
        if not self.scorer.supports(req.task):
            raise InvalidInput(f"unknown task '{req.task}': no configured reward scorer handles it")
        n, limit = len(req.responses), self.cfg.max_responses_per_group
        if n == 0:
            raise InvalidInput("a group needs at least one response")
        if n > limit:
            raise InvalidInput(f"{n} responses exceed reward.max_responses_per_group={limit}")
        return ScoreRequest(
            req.group_id, req.task, req.prompt, parse_reference(req.reference_json), list(req.responses)
        )

    def _check_size(self, size: int) -> None:
        if size > self.cfg.max_message_bytes:
            raise PayloadTooLarge(
                f"request of {size} bytes exceeds reward.max_message_bytes={self.cfg.max_message_bytes}"
            )

    def _admit(self, groups: int) -> None:
        if self.in_flight + groups > self.cfg.max_concurrent_groups:
            self.stats["overloaded"] += 1
            raise Overloaded(
                f"reward service at capacity ({self.in_flight} groups in flight, "
                f"max_concurrent_groups={self.cfg.max_concurrent_groups}); retry with backoff"
            )
        self.in_flight += groups

    async def _score(self, request: ScoreRequest) -> list[ScoreResult]:
        try:
            results = await asyncio.wait_for(self.scorer.score_group(request), self.cfg.score_timeout_s)
        except (asyncio.TimeoutError, TimeoutError):
            self.stats["groups_timeout"] += 1
            log.warning("group %s: scoring exceeded %.1fs", request.group_id, self.cfg.score_timeout_s)
            return fail_all(
                len(request.responses),
                Status.TIMEOUT,
                f"scoring exceeded reward.score_timeout_s={self.cfg.score_timeout_s}",
            )
        self.stats.update(f"reward_{r.status.name.lower()}" for r in results)
        return results

    def _response(self, request: ScoreRequest, results: list[ScoreResult]) -> reward_pb2.ScoreGroupResponse:
        self.stats["groups"] += 1
        return reward_pb2.ScoreGroupResponse(group_id=request.group_id, rewards=[to_proto(r) for r in results])

    async def score_group(self, req: reward_pb2.ScoreGroupRequest) -> reward_pb2.ScoreGroupResponse:
        self._check_size(req.ByteSize())
        request = self.validate(req)
        self._admit(1)
        try:
            return self._response(request, await self._score(request))
        finally:
            self.in_flight -= 1

    async def score_batch(self, req: reward_pb2.ScoreBatchRequest) -> reward_pb2.ScoreBatchResponse:
        self._check_size(req.ByteSize())
        # Validate all first: one malformed group rejects the call before any work starts.
        requests = [self.validate(g) for g in req.groups]
        self._admit(len(requests))
        try:
            scored = await asyncio.gather(*(self._score(r) for r in requests))
        finally:
            self.in_flight -= len(requests)
        return reward_pb2.ScoreBatchResponse(groups=[self._response(r, s) for r, s in zip(requests, scored)])

    async def close(self) -> None:
        await self.scorer.close()
