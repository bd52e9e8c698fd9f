"""Fault tests against real external reward-service processes built only from the proto
(`examples/external_reward_server.py`): the remote scorer inside our service, and RewardClient."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from rspo_proto.v1 import reward_pb2
from services.common.config import RetryConfig, ScorerSpec
from services.common.errors import ConfigError, DeadlineExceeded, InvalidInput
from services.reward.client import RewardClient
from services.reward.scorers import ScoreRequest, ScoreResult, Status, build_scorer
from services.reward.scorers.remote import CircuitBreaker, TokenBucket
from tests.reward.reward_helpers import SERVING, external, group, health_status, reward_config, running

FAST_RETRY = {"max_attempts": 3, "initial_backoff_s": 0.01, "max_backoff_s": 0.05}
OK = reward_pb2.REWARD_STATUS_OK


def remote_spec(*addresses: str, **options: object) -> list[dict[str, object]]:
    return [{"kind": "remote", "options": {"addresses": list(addresses), "retry": FAST_RETRY, **options}}]


def score_once(spec: ScorerSpec, request: ScoreRequest) -> list[ScoreResult]:
    """Build, use and close a scorer inside one event loop (its channels belong to that loop)."""

    async def body() -> list[ScoreResult]:
        scorer = build_scorer(spec)
        try:
            return await scorer.score_group(request)
        finally:
            await scorer.close()

    return asyncio.run(body())


def test_external_server_rewards_are_used_through_our_service() -> None:
    with external("--bonus", "0.25") as ext:

        async def body() -> None:
            async with running(reward_config(remote_spec(ext.address))) as (_handle, _, stub):
                reply = await stub.ScoreGroup(group(["7", "3"], task="anything"), timeout=10)
                assert [(r.status, r.value) for r in reply.rewards] == [(OK, 1.25), (OK, 0.25)]
                assert reply.rewards[0].components["remote"] == 1.25

        asyncio.run(body())


def test_slow_server_times_out_is_retried_then_timeout_status() -> None:
    with external("--mode", "slow", "--delay", "5") as ext:
        spec = ScorerSpec(kind="remote", options={"addresses": [ext.address], "timeout_s": 0.3, "retry": FAST_RETRY})
        start = time.monotonic()
        results = score_once(spec, ScoreRequest("g", "t", "p", {"answer": "7"}, ["7", "1"]))
        elapsed = time.monotonic() - start
        assert [r.status for r in results] == [Status.TIMEOUT, Status.TIMEOUT]
        assert "DEADLINE_EXCEEDED" in results[0].message
        assert elapsed >= 0.9  # three attempts, each ended by its 0.3 s deadline, then it gives up

        async def via_client() -> None:
            async with RewardClient(ext.address, 0.3, RetryConfig(**FAST_RETRY), 1 << 20) as client:
                with pytest.raises(DeadlineExceeded):
                    await client.score_group("g", "t", "p", '{"answer": "7"}', ["7"])
                assert client.retries == 2

        asyncio.run(via_client())


def test_flapping_server_succeeds_within_the_budget() -> None:
    with external("--mode", "flaky", "--fail-count", "2", "--bonus", "0.5") as ext:

        async def body() -> None:
            async with RewardClient(ext.address, 2.0, RetryConfig(**FAST_RETRY), 1 << 20) as client:
                rewards = await client.score_group("g", "t", "p", '{"answer": "7"}', ["7"])
                assert [(r.status, r.value) for r in rewards] == [(OK, 1.5)]
                assert client.retries == 2

        asyncio.run(body())
    with external("--mode", "flaky", "--fail-count", "2") as ext:
        spec = ScorerSpec(kind="remote", options={"addresses": [ext.address], "retry": FAST_RETRY})
        results = score_once(spec, ScoreRequest("g", "t", "p", {"answer": "7"}, ["7"]))
        assert [(r.status, r.value) for r in results] == [(Status.OK, 1.0)]


@pytest.mark.parametrize(
    ("variant", "needle"), [("count", "returned 3 rewards"), ("nan", "non-finite"), ("range", "outside")]
)
def test_garbage_answers_are_invalid_and_nothing_crashes(variant: str, needle: str) -> None:
    with external("--mode", "garbage") as ext:

        async def body() -> None:
            cfg = reward_config(remote_spec(ext.address), max_reward=10.0)
            async with running(cfg) as (handle, _, stub):
                reply = await stub.ScoreGroup(group(["7", "3"], task="x", prompt=variant), timeout=10)
                assert [r.status for r in reply.rewards] == [reward_pb2.REWARD_STATUS_INVALID] * 2
                assert needle in reply.rewards[0].message
                assert all(r.value == 0.0 for r in reply.rewards)
                assert await health_status(handle.address) == SERVING
            if variant == "count":  # the client's own count check
                async with RewardClient(ext.address, 2.0, RetryConfig(**FAST_RETRY), 1 << 20) as client:
                    with pytest.raises(InvalidInput, match="returned 3 rewards for 2"):
                        await client.score_group("g", "x", "count", "{}", ["a", "b"])

        asyncio.run(body())


def test_bearer_token_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RSPO_TEST_REWARD_TOKEN", "s3cret")
    with external("--require-token-env", "RSPO_TEST_REWARD_TOKEN") as ext:
        good = ScorerSpec(
            kind="remote", options={"addresses": [ext.address], "bearer_token_env": "RSPO_TEST_REWARD_TOKEN"}
        )
        request = ScoreRequest("g", "t", "p", {"answer": "7"}, ["7"])
        assert score_once(good, request)[0].value == 1.0
        bare = ScorerSpec(kind="remote", options={"addresses": [ext.address], "retry": FAST_RETRY})
        result = score_once(bare, request)[0]
        assert result.status is Status.ERROR and "UNAUTHENTICATED" in result.message
    with pytest.raises(ConfigError, match="NOT_SET_ANYWHERE"):
        build_scorer(ScorerSpec(kind="remote", options={"addresses": ["x:1"], "bearer_token_env": "NOT_SET_ANYWHERE"}))


def test_failover_to_a_healthy_endpoint_and_circuit_breaker() -> None:
    with external() as ext:
        dead = "127.0.0.1:1"  # nothing listens there: UNAVAILABLE at once
        spec = ScorerSpec(
            kind="remote",
            options={
                "addresses": [dead, ext.address],
                "retry": FAST_RETRY,
                "breaker_failures": 1,
                "breaker_reset_s": 60,
            },
        )
        request = ScoreRequest("g", "t", "p", {"answer": "7"}, ["7"])

        async def body() -> None:
            scorer = build_scorer(spec)
            for _ in range(4):
                assert (await scorer.score_group(request))[0].value == 1.0
            breaker = scorer.endpoints[0].breaker  # type: ignore[attr-defined]
            assert breaker.state == "open"
            await scorer.close()

        asyncio.run(body())


def test_circuit_breaker_states() -> None:
    breaker = CircuitBreaker(failures=2, reset_s=0.05)
    assert breaker.allow()
    breaker.record(False)
    assert breaker.state == "closed"
    breaker.record(False)
    assert breaker.state == "open" and not breaker.allow()
    time.sleep(0.06)
    assert breaker.allow() and not breaker.allow()  # half-open: exactly one trial
    breaker.record(True)
    assert breaker.state == "closed"


def test_token_bucket_limits_the_rate() -> None:
    async def body() -> float:
        bucket = TokenBucket(rate=50.0, burst=1)
        start = time.monotonic()
        for _ in range(6):
            await bucket.acquire()
        return time.monotonic() - start

    assert asyncio.run(body()) >= 0.08  # 5 waits of 20 ms (a lower bound: the limiter must make us wait)


def test_unreachable_service_raises_unavailable_after_retries() -> None:
    async def body() -> None:
        async with RewardClient("127.0.0.1:1", 1.0, RetryConfig(**FAST_RETRY), 1 << 20) as client:
            with pytest.raises(Exception) as info:
                await client.score_group("g", "t", "p", "{}", ["x"])
            assert getattr(info.value, "code", None) == grpc.StatusCode.UNAVAILABLE
            assert client.retries == 2

    asyncio.run(body())
