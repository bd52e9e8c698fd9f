"""Forward groups to external reward services over gRPC (the public `RewardService` contract).

Per call: a deadline (`timeout_s`) per attempt; retries with jittered backoff only on
retryable codes (`services.common.retry`), each retry on the next healthy endpoint;
a semaphore bounding calls in flight; a token bucket bounding calls per second; and a
circuit breaker per endpoint that stops sending to an endpoint after
`breaker_failures` consecutive transport failures for `breaker_reset_s`, then lets
one trial call through (half-open).

The remote's per-response statuses pass through unchanged. A remote answer with the
wrong number of rewards makes the whole group INVALID; values are range-checked by
the combine layer. When the budget is spent: DEADLINE_EXCEEDED -> TIMEOUT statuses,
the remote rejecting the request (INVALID_ARGUMENT) -> INVALID, anything else -> ERROR.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import time
from pathlib import Path

import grpc
from pydantic import Field

from rspo_proto.v1 import reward_pb2, reward_pb2_grpc
from services.common.config import RetryConfig, ScorerSpec
from services.common.errors import ConfigError, DeadlineExceeded, InvalidInput, RspoError, Unavailable
from services.common.grpc_server import channel_options
from services.common.retry import as_rspo_error, call_with_retry
from services.reward.scorers.base import (
    BaseScorer,
    Options,
    ScoreRequest,
    ScoreResult,
    Status,
    fail_all,
    parse_options,
    register,
)


class RemoteOptions(Options):
    addresses: list[str] = Field(..., min_length=1, description="host:port of each replica/endpoint.")
    timeout_s: float = Field(30.0, gt=0, description="Deadline of each attempt.")
    retry: RetryConfig = RetryConfig()
    tls: bool = False
    tls_root_cert: str | None = Field(None, description="PEM file of the CA to trust (implies tls).")
    bearer_token_env: str | None = Field(None, description="Env var holding a bearer token sent as authorization.")
    max_concurrency: int = Field(64, ge=1)
    rate_per_s: float | None = Field(None, gt=0, description="Token-bucket rate of calls; None = unlimited.")
    burst: int = Field(16, ge=1)
    breaker_failures: int = Field(5, ge=1)
    breaker_reset_s: float = Field(10.0, gt=0)
    max_message_bytes: int = Field(64 << 20, ge=1 << 12)
    task: str | None = Field(None, description="Task name sent to the remote; None forwards the request's task.")


class TokenBucket:
    """`rate` tokens per second, at most `burst` saved; `acquire` waits for a token."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, float(burst)
        self.tokens, self.stamp = float(burst), time.monotonic()
        self.lock = asyncio.Lock()

    async def acquire(self) -> None:
        async with self.lock:  # FIFO-ish: one waiter computes its sleep at a time
            while True:
                now = time.monotonic()
                self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
                self.stamp = now
                if self.tokens >= 1.0:
                    self.tokens -= 1.0
                    return
                await asyncio.sleep((1.0 - self.tokens) / self.rate)


class CircuitBreaker:
    """closed -> (n consecutive failures) -> open for reset_s -> half-open: one trial decides."""

    def __init__(self, failures: int, reset_s: float) -> None:
        self.threshold, self.reset_s = failures, reset_s
        self.failures = 0
        self.opened_at: float | None = None
        self.trial_in_flight = False

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half_open" if time.monotonic() - self.opened_at >= self.reset_s else "open"

    def allow(self) -> bool:
        state = self.state
        if state == "closed":
            return True
        if state == "half_open" and not self.trial_in_flight:
            self.trial_in_flight = True
            return True
        return False

    def record(self, success: bool) -> None:
        self.trial_in_flight = False
        if success:
            self.failures, self.opened_at = 0, None
            return
        self.failures += 1
        if self.failures >= self.threshold or self.opened_at is not None:
            self.opened_at = time.monotonic()


class Endpoint:
    def __init__(self, address: str, opts: RemoteOptions) -> None:
        self.address, self.opts = address, opts
        self.breaker = CircuitBreaker(opts.breaker_failures, opts.breaker_reset_s)
        # Created on first use: an aio channel belongs to the event loop that is running then,
        # and scorers are built from config before any loop may exist.
        self.channel: grpc.aio.Channel | None = None
        self._stub: reward_pb2_grpc.RewardServiceAsyncStub | None = None

    @property
    def stub(self) -> reward_pb2_grpc.RewardServiceAsyncStub:
        if self._stub is None:
            self.channel = _make_channel(self.address, self.opts)
            self._stub = reward_pb2_grpc.RewardServiceStub(self.channel)  # type: ignore[assignment]
        assert self._stub is not None
        return self._stub

    async def close(self) -> None:
        if self.channel is not None:
            await self.channel.close()
        self.channel, self._stub = None, None


def _make_channel(address: str, opts: RemoteOptions) -> grpc.aio.Channel:
    options = channel_options(opts.max_message_bytes)
    if not (opts.tls or opts.tls_root_cert):
        return grpc.aio.insecure_channel(address, options=options)
    root = Path(opts.tls_root_cert).read_bytes() if opts.tls_root_cert else None
    return grpc.aio.secure_channel(address, grpc.ssl_channel_credentials(root_certificates=root), options=options)


def _read_token(env_name: str | None) -> str | None:
    if env_name is None:
        return None
    token = os.environ.get(env_name)
    if not token:
        raise ConfigError(f"remote scorer: bearer_token_env '{env_name}' is not set in the environment")
    return token


# Failures that say something about the endpoint (count toward its breaker); others are about the request.
_ENDPOINT_FAILURES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
)


class RemoteScorer(BaseScorer):
    def __init__(self, opts: RemoteOptions) -> None:
        if opts.tls_root_cert and not Path(opts.tls_root_cert).is_file():
            raise ConfigError(f"remote scorer: tls_root_cert {opts.tls_root_cert} does not exist")
        self.opts = opts
        token = _read_token(opts.bearer_token_env)
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.endpoints = [Endpoint(a, opts) for a in opts.addresses]
        self._next = itertools.cycle(range(len(self.endpoints)))
        self.slots = asyncio.Semaphore(opts.max_concurrency)
        self.bucket = TokenBucket(opts.rate_per_s, opts.burst) if opts.rate_per_s else None

    def _pick(self) -> Endpoint:
        """Next endpoint in round-robin order whose breaker lets a call through."""
        for _ in range(len(self.endpoints)):
            endpoint = self.endpoints[next(self._next)]
            if endpoint.breaker.allow():
                return endpoint
        raise Unavailable(f"circuit open for every reward endpoint ({', '.join(self.opts.addresses)})")

    async def _attempt(self, message: reward_pb2.ScoreGroupRequest) -> reward_pb2.ScoreGroupResponse:
        endpoint = self._pick()
        if self.bucket is not None:
            await self.bucket.acquire()
        try:
            response: reward_pb2.ScoreGroupResponse = await endpoint.stub.ScoreGroup(
                message, timeout=self.opts.timeout_s, metadata=self.metadata
            )
        except grpc.RpcError as err:
            endpoint.breaker.record(err.code() not in _ENDPOINT_FAILURES)
            raise
        except BaseException:  # cancelled (group timeout): says nothing about the endpoint
            endpoint.breaker.trial_in_flight = False
            raise
        endpoint.breaker.record(True)
        return response

    async def score_group(self, request: ScoreRequest) -> list[ScoreResult]:
        n = len(request.responses)
        message = to_proto_request(request, self.opts.task)
        try:
            async with self.slots:
                response = await call_with_retry(lambda: self._attempt(message), self.opts.retry)
        except (RspoError, grpc.RpcError) as raw:
            err = as_rspo_error(raw)
            assert err is not None
            return fail_all(n, _status_for(err), f"remote scorer: {err.message}")
        return from_proto_rewards(list(response.rewards), n, "remote scorer")

    async def close(self) -> None:
        await asyncio.gather(*(e.close() for e in self.endpoints))


def _status_for(err: RspoError) -> Status:
    if isinstance(err, DeadlineExceeded):
        return Status.TIMEOUT
    if isinstance(err, InvalidInput):
        return Status.INVALID
    return Status.ERROR


def to_proto_request(request: ScoreRequest, task: str | None = None) -> reward_pb2.ScoreGroupRequest:
    return reward_pb2.ScoreGroupRequest(
        group_id=request.group_id,
        task=task or request.task,
        prompt=request.prompt,
        reference_json=json.dumps(request.reference),
        responses=list(request.responses),
    )


def from_proto_rewards(rewards: list[reward_pb2.Reward], n: int, source: str) -> list[ScoreResult]:
    """Convert a remote's rewards; a wrong count or an unknown status is INVALID, never a number."""
    if len(rewards) != n:
        return fail_all(n, Status.INVALID, f"{source} returned {len(rewards)} rewards for {n} responses")
    out: list[ScoreResult] = []
    for r in rewards:
        try:
            status = Status(r.status)
        except ValueError:
            out.append(ScoreResult(0.0, Status.INVALID, f"{source} returned status {r.status} (unspecified/unknown)"))
            continue
        out.append(ScoreResult(r.value, status, r.message, dict(r.components)))
    return out


@register("remote")
def make_remote_scorer(spec: ScorerSpec) -> RemoteScorer:
    return RemoteScorer(parse_options(RemoteOptions, spec))
