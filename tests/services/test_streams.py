"""Delivery semantics of services.common.streams against a real Redis server."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from services.common.config import RedisConfig
from services.common.redis_server import EmbeddedRedis
from services.common.streams import StreamQueue


def queue(client: aioredis.Redis, consumer: str, **cfg: float) -> StreamQueue:
    rc = RedisConfig(block_ms=50, claim_idle_s=cfg.get("claim_idle_s", 30.0))
    return StreamQueue(client, "s:in", "g", consumer, rc)


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_unacked_entries_come_back_to_the_same_consumer_after_restart(redis_server: EmbeddedRedis) -> None:
    async def go() -> None:
        client = aioredis.Redis.from_url(redis_server.url)
        q = queue(client, "c1")
        await q.ensure_group()
        for i in range(3):
            await q.publish(f"m{i}".encode(), traceparent="00-abc-def-01" if i == 0 else None)
        first = await q.read(count=10)
        assert [d.data for d in first] == [b"m0", b"m1", b"m2"]
        assert first[0].traceparent == "00-abc-def-01" and first[1].traceparent is None
        await q.ack([first[0].entry_id])
        # A restarted consumer (same name, fresh object) re-reads its own pending entries first.
        again = await queue(client, "c1").read(count=10)
        assert [d.data for d in again] == [b"m1", b"m2"]
        assert all(d.deliveries == 2 for d in again)
        await client.aclose()

    run(go())


def test_idle_entries_of_a_dead_consumer_are_reclaimed(redis_server: EmbeddedRedis) -> None:
    async def go() -> None:
        client = aioredis.Redis.from_url(redis_server.url)
        dead = queue(client, "dead", claim_idle_s=0.2)
        await dead.ensure_group()
        await dead.publish(b"x")
        assert len(await dead.read(count=1)) == 1
        live = queue(client, "live", claim_idle_s=0.2)
        assert await live.read(count=1, block_ms=10) == []  # not idle long enough yet
        await asyncio.sleep(0.3)
        got = await live.read(count=1)
        assert [d.data for d in got] == [b"x"] and got[0].deliveries == 2
        await client.aclose()

    run(go())


def test_publish_and_ack_is_atomic(redis_server: EmbeddedRedis) -> None:
    async def go() -> None:
        client = aioredis.Redis.from_url(redis_server.url)
        q = queue(client, "c")
        await q.ensure_group()
        await q.publish(b"task")
        (d,) = await q.read(count=1)
        await q.publish_and_ack("s:out", b"result", d.entry_id)
        assert await client.xlen("s:out") == 1
        assert (await client.xpending("s:in", "g"))["pending"] == 0
        await client.aclose()

    run(go())


def test_dead_letter_moves_and_acks(redis_server: EmbeddedRedis) -> None:
    async def go() -> None:
        client = aioredis.Redis.from_url(redis_server.url)
        q = queue(client, "c")
        await q.ensure_group()
        await q.publish(b"poison")
        (d,) = await q.read(count=1)
        await q.dead_letter("s:dead", d, "cannot parse")
        (entry,) = await client.xrange("s:dead")
        assert entry[1][b"reason"] == b"cannot parse" and entry[1][b"data"] == b"poison"
        assert (await client.xpending("s:in", "g"))["pending"] == 0
        assert await q.lag() == {"pending": 0, "lag": 0}
        await client.aclose()

    run(go())
