"""Durable work queues on Redis Streams with consumer groups.

Delivery semantics (what callers may rely on):
- At-least-once. An entry stays in the group's pending list until a consumer
  acknowledges it; a consumer that dies leaves its entries pending, and any live
  consumer reclaims them after `claim_idle_s` (XAUTOCLAIM). Consumers must
  therefore be idempotent: the learner de-duplicates groups by id.
- A consumer re-reads its *own* pending entries first after a restart (id "0"),
  so a restarted learner sees what it had read but not yet acknowledged.
- `publish_and_ack` appends the result to the next stream and acknowledges the
  input in one MULTI/EXEC transaction: both commands reach the server in one EXEC, so a
  client crash or disconnect leaves either both applied or neither.
- Entries delivered more than `max_deliveries` times are the caller's to
  dead-letter (`dead_letter`), which also acknowledges them.
- Nothing here trims a stream with MAXLEN: trimming drops pending work silently.
  Backpressure belongs to the producer (the learner's admission control).

Payloads are serialized protobuf messages in field `data`; `traceparent` (W3C)
carries trace context across the queue.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from services.common.config import RedisConfig, RspoConfig


@dataclass(frozen=True)
class StreamKeys:
    """Redis key names of one run."""

    base: str

    @classmethod
    def for_run(cls, cfg: RspoConfig) -> StreamKeys:
        return cls(f"{cfg.redis.key_prefix}:{cfg.run.run_id}")

    @property
    def tasks(self) -> str:
        return f"{self.base}:tasks"

    @property
    def groups(self) -> str:
        return f"{self.base}:groups"

    @property
    def dead(self) -> str:
        return f"{self.base}:dead"

    @property
    def policy(self) -> str:
        """Latest published policy version (an integer string)."""
        return f"{self.base}:policy"

    @property
    def admitted(self) -> str:
        """Count of prompt tasks ever admitted (the learner's durable dataset cursor)."""
        return f"{self.base}:admitted"


TASKS_GROUP = "rollout"
GROUPS_GROUP = "learner"


@dataclass(frozen=True)
class Delivery:
    entry_id: str
    data: bytes
    traceparent: str | None
    # How many times this entry has been delivered, this delivery included.
    deliveries: int


def default_consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def connect(cfg: RedisConfig, url: str | None = None) -> aioredis.Redis:
    target = url or cfg.url
    if not target:
        raise ValueError("redis.url is not set; pass --redis-url or set redis.url in the config")
    return aioredis.Redis.from_url(
        target, decode_responses=False, socket_timeout=cfg.socket_timeout_s, health_check_interval=30
    )


# redis-py's xadd wants its own broad field type; this is the subset we write.
Fields = dict[Any, Any]


def _fields(data: bytes, traceparent: str | None) -> Fields:
    fields: Fields = {"data": data}
    if traceparent:
        fields["traceparent"] = traceparent
    return fields


def _decode(entry_id: bytes | str, fields: dict[bytes, bytes], deliveries: int) -> Delivery:
    tp = fields.get(b"traceparent")
    return Delivery(
        entry_id=entry_id.decode() if isinstance(entry_id, bytes) else entry_id,
        data=fields.get(b"data", b""),
        traceparent=tp.decode() if tp else None,
        deliveries=deliveries,
    )


class StreamQueue:
    """One consumer of one stream's consumer group."""

    def __init__(self, client: aioredis.Redis, stream: str, group: str, consumer: str, cfg: RedisConfig) -> None:
        self.client = client
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self.cfg = cfg
        self._own_pending_drained = False
        self._last_reclaim = float("-inf")

    async def ensure_group(self) -> None:
        try:
            await self.client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except ResponseError as err:
            if "BUSYGROUP" not in str(err):
                raise

    async def publish(self, data: bytes, traceparent: str | None = None) -> str:
        entry_id = await self.client.xadd(self.stream, _fields(data, traceparent))
        return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)

    async def read(self, count: int, block_ms: int | None = None) -> list[Delivery]:
        """Next entries for this consumer: its own pending ones first, then reclaimed, then new."""
        if not self._own_pending_drained:
            own = await self._read_own_pending(count)
            if own:
                return own
            self._own_pending_drained = True
        # Reclaiming costs a round trip: do it every claim_idle_s / 2, not on every read.
        now = time.monotonic()
        if now - self._last_reclaim >= self.cfg.claim_idle_s / 2:
            self._last_reclaim = now
            claimed = await self.reclaim_idle(count)
            if claimed:
                return claimed
        resp = await self.client.xreadgroup(
            self.group,
            self.consumer,
            {self.stream: ">"},
            count=count,
            block=self.cfg.block_ms if block_ms is None else block_ms,
        )
        return [_decode(eid, fields, 1) for _, entries in _entries(resp) for eid, fields in entries if fields]

    async def _read_own_pending(self, count: int) -> list[Delivery]:
        resp = await self.client.xreadgroup(self.group, self.consumer, {self.stream: "0"}, count=count)
        entries = [(eid, fields) for _, es in _entries(resp) for eid, fields in es if fields]
        counts = await self._delivery_counts([e for e, _ in entries])
        return [_decode(eid, fields, counts.get(_sid(eid), 1)) for eid, fields in entries]

    async def reclaim_idle(self, count: int) -> list[Delivery]:
        """Take over entries another consumer left pending for longer than claim_idle_s."""
        min_idle_ms = int(self.cfg.claim_idle_s * 1000)
        _next, entries, _deleted = await self.client.xautoclaim(
            self.stream, self.group, self.consumer, min_idle_ms, start_id="0-0", count=count
        )
        entries = [(eid, fields) for eid, fields in entries if fields]
        counts = await self._delivery_counts([e for e, _ in entries])
        return [_decode(eid, fields, counts.get(_sid(eid), 1)) for eid, fields in entries]

    async def _delivery_counts(self, ids: Sequence[bytes | str]) -> dict[str, int]:
        out: dict[str, int] = {}
        for eid in ids:
            rows = await self.client.xpending_range(self.stream, self.group, min=eid, max=eid, count=1)
            if rows:
                out[_sid(eid)] = int(rows[0]["times_delivered"])
        return out

    async def ack(self, entry_ids: Sequence[str]) -> int:
        if not entry_ids:
            return 0
        return int(await self.client.xack(self.stream, self.group, *entry_ids))

    async def publish_and_ack(
        self, out_stream: str, data: bytes, entry_id: str, traceparent: str | None = None
    ) -> None:
        """Append `data` to `out_stream` and ack `entry_id` here, atomically (MULTI/EXEC)."""
        await self.publish_many_and_ack(out_stream, [(data, entry_id, traceparent)])

    async def publish_many_and_ack(self, out_stream: str, items: Sequence[tuple[bytes, str, str | None]]) -> None:
        """For each (data, entry_id, traceparent): XADD data to `out_stream` and XACK entry_id here.

        All in one MULTI/EXEC: one round trip for a whole read's worth of results, and a crash
        leaves each result either published-and-acked or neither.
        """
        if not items:
            return
        async with self.client.pipeline(transaction=True) as pipe:
            for data, _, traceparent in items:
                pipe.xadd(out_stream, _fields(data, traceparent))
            pipe.xack(self.stream, self.group, *[entry_id for _, entry_id, _ in items])
            await pipe.execute()

    async def dead_letter(self, dead_stream: str, delivery: Delivery, reason: str) -> None:
        """Move an entry to the dead-letter stream with its reason, and ack it here (atomically)."""
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.xadd(
                dead_stream,
                {
                    "data": delivery.data,
                    "reason": reason,
                    "source": self.stream,
                    "entry_id": delivery.entry_id,
                    "deliveries": str(delivery.deliveries),
                },
            )
            pipe.xack(self.stream, self.group, delivery.entry_id)
            await pipe.execute()

    async def lag(self) -> dict[str, int]:
        """Pending (delivered, unacked) and lag (never delivered) counts of this group."""
        groups = await self.client.xinfo_groups(self.stream)
        for g in groups:
            name = g["name"].decode() if isinstance(g["name"], bytes) else g["name"]
            if name == self.group:
                return {"pending": int(g.get("pending", 0)), "lag": int(g.get("lag") or 0)}
        return {"pending": 0, "lag": 0}


def _sid(eid: bytes | str) -> str:
    return eid.decode() if isinstance(eid, bytes) else eid


def _entries(resp: Any) -> list[tuple[Any, list[tuple[Any, dict[bytes, bytes]]]]]:
    """XREADGROUP reply as [(stream, [(id, fields), ...])] (RESP2 list form; empty on timeout)."""
    return list(resp or [])
