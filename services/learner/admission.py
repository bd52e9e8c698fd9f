"""Admission control: the learner decides how many prompt tasks may be in flight.

Staleness is bounded by admitting work, not by discarding finished work: at most
`(max_staleness + 1) * groups_per_step` groups are admitted but not yet resolved
(applied or dropped). A sample generated with policy version v is then applied
no later than about max_staleness steps after v.

The dataset cursor is the Redis counter of admitted tasks, advanced in the same
MULTI/EXEC as the XADDs, so a restarted learner continues where admission
stopped and never admits a prompt twice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import redis.asyncio as aioredis

from rspo_proto.v1 import sample_pb2
from services.common.streams import StreamKeys


def admission_budget(
    *, admitted: int, resolved: int, groups_per_step: int, max_staleness: int, total_groups: int, dropped: int
) -> int:
    """How many new tasks to admit now.

    admitted: tasks ever admitted; resolved: groups applied or dropped; total_groups:
    groups the run needs applied (total_steps * groups_per_step). Dropped groups are
    replaced, so the run still applies total_groups in the end.
    """
    window = (max_staleness + 1) * groups_per_step
    in_flight = admitted - resolved
    remaining = total_groups + dropped - admitted
    return max(0, min(window - in_flight, remaining))


async def read_admitted(client: aioredis.Redis, keys: StreamKeys) -> int:
    raw = await client.get(keys.admitted)
    return int(raw) if raw is not None else 0


async def admit_tasks(
    client: aioredis.Redis,
    keys: StreamKeys,
    start_index: int,
    count: int,
    make_task: Callable[[int], sample_pb2.PromptTask],
    traceparents: Sequence[str | None] | None = None,
) -> list[sample_pb2.PromptTask]:
    """XADD tasks start_index .. start_index+count-1 and advance the cursor, atomically."""
    tasks = [make_task(start_index + i) for i in range(count)]
    async with client.pipeline(transaction=True) as pipe:
        for i, task in enumerate(tasks):
            fields: dict[Any, Any] = {"data": task.SerializeToString()}
            tp = traceparents[i] if traceparents else None
            if tp:
                fields["traceparent"] = tp
            pipe.xadd(keys.tasks, fields)
        pipe.set(keys.admitted, start_index + count)
        await pipe.execute()
    return tasks
