"""The rollout loop: read prompt tasks, generate n samples, score them, publish whole groups.

For each task delivery:
1. make sure the replica runs the latest published policy (pull it from the
   learner when `:policy` changed; a failed or partial sync raises, the replica
   never generates with half-loaded weights);
2. generate `task.n` samples with the current policy, stamped with its version;
3. score the group through `RewardService` (per-call deadline, bounded retries on
   retryable codes); a group is only COMPLETE when every sample has an OK reward;
   after `group_attempts` failed scorings it is DROPPED whole, never partially. If the reward
   service itself is unreachable (UNAVAILABLE after retries) the task is left pending instead:
   an outage delays work (reclaimed after claim_idle_s) rather than burning the dataset;
4. publish the group and ack the task in one MULTI/EXEC (`publish_and_ack`).
A task delivered more than `max_deliveries` times (replicas keep dying on it)
is published as DROPPED and copied to the dead-letter stream.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis

from rspo_proto.v1 import reward_pb2, sample_pb2
from services.common import telemetry
from services.common.codec import FINISH_TO_PROTO, parse_message
from services.common.config import RspoConfig
from services.common.errors import InvalidInput, RspoError, Unavailable
from services.common.streams import TASKS_GROUP, Delivery, StreamKeys, StreamQueue
from services.rollout.backends.base import Generation, GenerationBackend, SamplingSettings

log = logging.getLogger(__name__)

ScoreFn = Callable[[sample_pb2.PromptTask, list[str]], Awaitable[list[reward_pb2.Reward]]]
FetchFn = Callable[[int], Awaitable[tuple[int, dict]]]  # type: ignore[type-arg]


@dataclass
class RolloutCounters:
    groups_published: int = 0
    groups_dropped: int = 0
    # Groups whose scoring found the reward service unreachable; their tasks were left pending.
    groups_deferred: int = 0
    weight_syncs: int = 0
    generated_tokens: int = 0
    generate_s: float = 0.0
    score_s: float = 0.0
    sync_s: float = 0.0


def build_group(
    task: sample_pb2.PromptTask, generations: Sequence[Generation], version: int, producer: str
) -> sample_pb2.SampleGroup:
    """A COMPLETE (not yet scored) group. Samples are added in place: passing a list of Sample
    messages to the constructor would copy every token and logprob a second time."""
    group = sample_pb2.SampleGroup(
        group_id=task.group_id,
        task=task,
        status=sample_pb2.GROUP_STATUS_COMPLETE,
        producer=producer,
        generated_unix_ns=time.time_ns(),
    )
    for g in generations:
        group.samples.add(
            token_ids=g.token_ids,
            logprobs=g.logprobs,
            text=g.text,
            finish_reason=FINISH_TO_PROTO[g.finish_reason],
            policy_version=version,
        )
    return group


class RolloutWorker:
    def __init__(
        self,
        cfg: RspoConfig,
        client: aioredis.Redis,
        backend: GenerationBackend,
        score: ScoreFn,
        fetch_weights: FetchFn,
        replica: str,
    ) -> None:
        self.cfg = cfg
        self.client = client
        self.backend = backend
        self.score = score
        self.fetch_weights = fetch_weights
        self.replica = replica
        self.keys = StreamKeys.for_run(cfg)
        self.queue = StreamQueue(client, self.keys.tasks, TASKS_GROUP, replica, cfg.redis)
        self.counters = RolloutCounters()
        self.settings = SamplingSettings.from_model_config(cfg.model)
        self._sync_lock = asyncio.Lock()

    async def run(self, stop: asyncio.Event) -> None:
        """Run `rollout.concurrency` read loops: while one waits on scoring or Redis, another generates.

        Each loop is its own consumer (`replica`, `replica/1`, ...), so a restarted replica's
        loops re-read exactly their own pending entries.
        """
        await self.queue.ensure_group()
        names = [self.replica] + [f"{self.replica}/{i}" for i in range(1, self.cfg.rollout.concurrency)]
        readers = [StreamQueue(self.client, self.keys.tasks, TASKS_GROUP, name, self.cfg.redis) for name in names]
        await asyncio.gather(*(self._loop(reader, stop) for reader in readers))

    async def _loop(self, reader: StreamQueue, stop: asyncio.Event) -> None:
        while not stop.is_set():
            if not await self.sync_weights():
                await asyncio.sleep(min(self.cfg.redis.block_ms / 1000, 0.5))
                continue
            deliveries = await reader.read(count=self.cfg.rollout.tasks_per_read)
            if deliveries:
                # Re-check after a blocking read: a task admitted while we waited was admitted
                # against a newer policy, and staleness stays within the admission bound.
                with telemetry.busy():
                    await self.sync_weights()
                    await self.handle(deliveries)

    async def sync_weights(self) -> bool:
        """Load the announced policy version if it differs from ours. False if none is published yet."""
        async with self._sync_lock:  # concurrent loops must not fetch the same version twice
            return await self._sync_weights()

    async def _sync_weights(self) -> bool:
        raw = await self.client.get(self.keys.policy)
        if raw is None:
            return False
        wanted = int(raw)
        if wanted == self.backend.policy_version and self.counters.weight_syncs > 0:
            return True
        t0 = time.monotonic()
        # Ask for the latest (0), not `wanted`: the learner may have moved on since the announcement.
        version, state = await self.fetch_weights(0)
        await asyncio.to_thread(self.backend.load_state_dict, state, version)
        self.counters.weight_syncs += 1
        self.counters.sync_s += time.monotonic() - t0
        log.info("replica %s now serves policy version %d (%.3fs)", self.replica, version, time.monotonic() - t0)
        return True

    async def handle(self, deliveries: Sequence[Delivery]) -> None:
        """Process one read's worth of task deliveries; generation is batched across them."""
        ready: list[tuple[Delivery, sample_pb2.PromptTask]] = []
        for delivery in deliveries:
            task = await self._accept(delivery)
            if task is not None:
                telemetry.rollout_begin(task, delivery.traceparent)
                ready.append((delivery, task))
        if not ready:
            return
        groups = await self.process([task for _, task in ready])
        complete: list[tuple[bytes, str, str | None]] = []
        deferred = 0
        for (delivery, task), group in zip(ready, groups):
            traceparent = telemetry.rollout_end(group) or delivery.traceparent
            if group.status == sample_pb2.GROUP_STATUS_DROPPED:
                await self.drop(delivery, task, group.drop_reason, group)
            elif group.status == sample_pb2.GROUP_STATUS_COMPLETE:
                complete.append((group.SerializeToString(), delivery.entry_id, traceparent))
            else:
                deferred += 1
        # One MULTI/EXEC for the whole read: one round trip, each group published-and-acked or neither.
        await self.queue.publish_many_and_ack(self.keys.groups, complete)
        self.counters.groups_published += len(complete)
        if deferred:
            # The reward service is unreachable: the tasks stay pending (reclaimed after claim_idle_s,
            # dropped only after max_deliveries), so an outage does not burn through the dataset.
            self.counters.groups_deferred += deferred
            log.warning("reward service unreachable: %d task(s) left pending for retry", deferred)
            await asyncio.sleep(self.cfg.rollout.reward_retry.max_backoff_s)

    async def _accept(self, delivery: Delivery) -> sample_pb2.PromptTask | None:
        """The delivery's task, or None after dead-lettering garbage or dropping a poison task."""
        try:
            task = parse_message(sample_pb2.PromptTask, delivery.data, "PromptTask")
            if task.n < 1 or not task.prompt_token_ids or task.k > task.n or not task.group_id:
                raise InvalidInput(f"task {task.group_id!r} is unusable: n={task.n}, k={task.k}")
        except InvalidInput as err:
            log.warning("dead-lettering task entry %s: %s", delivery.entry_id, err)
            await self.queue.dead_letter(self.keys.dead, delivery, str(err))
            return None
        if delivery.deliveries > self.cfg.redis.max_deliveries:
            reason = f"task delivered {delivery.deliveries} times (max_deliveries={self.cfg.redis.max_deliveries})"
            await self.drop(delivery, task, reason)
            return None
        return task

    async def process(self, tasks: Sequence[sample_pb2.PromptTask]) -> list[sample_pb2.SampleGroup]:
        """Generate and score groups (no queue I/O): each COMPLETE, or DROPPED with the reason."""
        version = self.backend.policy_version
        with telemetry.rollout_generate(tasks):
            gens = await self._generate(tasks)
        groups = [build_group(task, g, version, self.replica) for task, g in zip(tasks, gens)]
        outcomes = await asyncio.gather(
            *(self._score_into(grp, [g.text for g in gen]) for grp, gen in zip(groups, gens))
        )
        for group, (reason, defer) in zip(groups, outcomes):
            if reason:
                # UNSPECIFIED = undecided: the caller leaves the task pending instead of dropping it.
                group.status = sample_pb2.GROUP_STATUS_UNSPECIFIED if defer else sample_pb2.GROUP_STATUS_DROPPED
                group.drop_reason = reason
            group.scored_unix_ns = time.time_ns()
        return groups

    async def _generate(self, tasks: Sequence[sample_pb2.PromptTask]) -> list[list[Generation]]:
        """One backend call per distinct n (usually one for the whole read)."""
        out: list[list[Generation]] = [[] for _ in tasks]
        by_n: dict[int, list[int]] = {}
        for i, task in enumerate(tasks):
            by_n.setdefault(task.n, []).append(i)
        t0 = time.monotonic()
        for n, idx in by_n.items():
            prompts = [list(tasks[i].prompt_token_ids) for i in idx]
            result = await asyncio.to_thread(self.backend.generate, prompts, n, self.settings)
            for i, gens in zip(idx, result):
                out[i] = gens
        self.counters.generate_s += time.monotonic() - t0
        self.counters.generated_tokens += sum(len(g.token_ids) for gens in out for g in gens)
        return out

    async def _score_into(self, group: sample_pb2.SampleGroup, texts: list[str]) -> tuple[str, bool]:
        """Fill rewards. Returns ('', False) on success, (why, False) when the group must be dropped,
        or (why, True) when the reward service itself was unreachable and the task should wait."""
        reason, unreachable = "", False
        t0 = time.monotonic()
        try:
            for attempt in range(1, self.cfg.rollout.group_attempts + 1):
                try:
                    rewards = await self.score(group.task, texts)
                except RspoError as err:
                    reason = f"scoring failed ({type(err).__name__}): {err.message}"
                    if not err.retryable:
                        return reason, False
                    unreachable = isinstance(err, Unavailable)
                    continue
                unreachable = False
                bad = [(i, r) for i, r in enumerate(rewards) if r.status != reward_pb2.REWARD_STATUS_OK]
                if not bad:
                    for sample, reward in zip(group.samples, rewards):
                        sample.reward.CopyFrom(reward)
                    return "", False
                i, r = bad[0]
                status = reward_pb2.RewardStatus.Name(r.status)
                reason = f"{len(bad)} of {len(texts)} rewards not OK (first: sample {i} {status}: {r.message})"
                if r.status == reward_pb2.REWARD_STATUS_INVALID:
                    return reason, False  # retrying an invalid answer cannot help
                log.info("group %s attempt %d: %s", group.group_id, attempt, reason)
            return reason, unreachable
        finally:
            self.counters.score_s += time.monotonic() - t0

    async def drop(
        self,
        delivery: Delivery,
        task: sample_pb2.PromptTask,
        reason: str,
        group: sample_pb2.SampleGroup | None = None,
    ) -> None:
        """Publish a DROPPED group (so the learner frees its slot), dead-letter it, ack the task: atomically."""
        dropped = group or sample_pb2.SampleGroup(group_id=task.group_id, task=task, producer=self.replica)
        dropped.status = sample_pb2.GROUP_STATUS_DROPPED
        dropped.drop_reason = reason
        data = dropped.SerializeToString()
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.xadd(self.keys.groups, {"data": data})
            pipe.xadd(
                self.keys.dead,
                {"data": data, "reason": reason, "source": self.keys.tasks, "entry_id": delivery.entry_id},
            )
            pipe.xack(self.keys.tasks, TASKS_GROUP, delivery.entry_id)
            await pipe.execute()
        self.counters.groups_dropped += 1
        log.warning("dropped group %s: %s", task.group_id, reason)
