"""Bounded retries with jittered exponential backoff, for retryable errors only.

A call is retried when it raises an `RspoError` whose `retryable` flag is set, or
a gRPC error whose status code is in `RETRYABLE_CODES`. Anything else (invalid
input, internal bugs) propagates at once: retrying it would only repeat it.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc

from services.common.config import RetryConfig
from services.common.errors import RspoError, from_rpc_error

T = TypeVar("T")


def as_rspo_error(err: BaseException) -> RspoError | None:
    """The taxonomy error for `err`, or None if it is not a known failure kind."""
    if isinstance(err, RspoError):
        return err
    if isinstance(err, grpc.RpcError):
        return from_rpc_error(err)
    return None


def backoff_s(attempt: int, policy: RetryConfig, rng: random.Random | None = None) -> float:
    """Full-jitter backoff before retry number `attempt` (1-based)."""
    cap = min(policy.max_backoff_s, policy.initial_backoff_s * policy.multiplier ** (attempt - 1))
    return (rng or random).uniform(0.0, cap)


async def call_with_retry(
    fn: Callable[[], Awaitable[T]],
    policy: RetryConfig,
    *,
    on_retry: Callable[[int, RspoError], None] | None = None,
) -> T:
    """Await `fn()` up to `policy.max_attempts` times; raise the last error as an `RspoError`.

    Non-retryable errors are raised after the first attempt, converted to the taxonomy.
    """
    attempt = 0
    while True:
        attempt += 1
        try:
            return await fn()
        except (RspoError, grpc.RpcError) as raw:
            err = as_rspo_error(raw)
            assert err is not None
            if not err.retryable or attempt >= policy.max_attempts:
                if err is raw:
                    raise
                raise err from raw
            if on_retry is not None:
                on_retry(attempt, err)
            await asyncio.sleep(backoff_s(attempt, policy))
