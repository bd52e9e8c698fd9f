"""The learner loop: admit prompts, collect complete groups, apply updates, checkpoint, ack, publish.

Order of a step (why it is safe):
1. take `groups_per_step` complete groups from the buffer;
2. `train_step` (rspo_core advantages + loss + optimizer step);
3. checkpoint model, optimizer, counters and resolved group ids (every
   `checkpoint_every_steps`, and always at the last step);
4. only then XACK the groups the checkpoint holds;
5. publish the new policy version (weights snapshot + `:policy` key).
A crash before 3 loses nothing: the groups are still pending and are re-read on
restart, against the model state of the previous checkpoint. A crash between 3
and 4 re-delivers groups whose ids the checkpoint lists: they are acked and
skipped, never applied twice.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
import torch

import rspo_core
from rspo_proto.v1 import sample_pb2
from services.common import telemetry
from services.common.codec import check_group, example_to_task, groups_to_batch, parse_message
from services.common.config import RspoConfig
from services.common.errors import InvalidInput
from services.common.streams import GROUPS_GROUP, TASKS_GROUP, Delivery, StreamKeys, StreamQueue
from services.learner.admission import admission_budget, admit_tasks, read_admitted
from services.learner.checkpoint import LearnerState, latest_checkpoint, load_checkpoint, save_checkpoint
from services.learner.step import train_step
from services.tasks.base import TaskFamily

log = logging.getLogger(__name__)


@dataclass
class LearnerRuntime:
    """What the loop trains: built by main.py, so the loop itself never loads anything."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    encode: Callable[[str], list[int]]
    pad_id: int
    task: TaskFamily
    device: torch.device
    ref_model: torch.nn.Module | None = None
    # bf16/fp16 autocast for the forward passes (GPU); None = full float32.
    autocast_dtype: torch.dtype | None = None


@dataclass
class _Pending:
    delivery: Delivery
    group: sample_pb2.SampleGroup


@dataclass
class StepClock:
    started: float = field(default_factory=time.monotonic)
    last_step: float = field(default_factory=time.monotonic)
    busy_s: float = 0.0


class LearnerWorker:
    def __init__(
        self,
        cfg: RspoConfig,
        run_dir: Path,
        client: aioredis.Redis,
        runtime: LearnerRuntime,
        publish: Callable[[int, torch.nn.Module], None],
    ) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        self.client = client
        self.rt = runtime
        self.publish_weights = publish
        self.keys = StreamKeys.for_run(cfg)
        self.queue = StreamQueue(client, self.keys.groups, GROUPS_GROUP, "learner", cfg.redis)
        self.state = LearnerState()
        self.admitted = 0
        self.buffer: list[_Pending] = []
        self.unacked: list[str] = []  # entry ids resolved since the last checkpoint
        self._resolved = set[str]()
        self._buffered = set[str]()  # ids of groups in self.buffer (duplicate check in O(1))
        self.clock = StepClock()
        self.finished = asyncio.Event()
        self.metrics_path = run_dir / "metrics.jsonl"

    @property
    def total_groups(self) -> int:
        return self.cfg.learner.total_steps * self.cfg.learner.groups_per_step

    # ---- start-up -------------------------------------------------------------------------
    async def restore(self) -> None:
        await self.queue.ensure_group()
        # Create the tasks group before the first XADD so no admitted task is ever missed by rollout.
        await StreamQueue(self.client, self.keys.tasks, TASKS_GROUP, "learner", self.cfg.redis).ensure_group()
        ckpt = latest_checkpoint(self.run_dir / "checkpoints")
        if ckpt is not None:
            self.state = load_checkpoint(ckpt, self.rt.model, self.rt.optimizer, self.rt.device)
            log.info("resumed from %s at step %d", ckpt, self.state.step)
        self._resolved = set(self.state.resolved_ids)
        self.admitted = await read_admitted(self.client, self.keys)
        await self._publish()

    # ---- the loop -------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        await self.restore()
        while self.state.step < self.cfg.learner.total_steps and not stop.is_set():
            await self.admit()
            for delivery in await self.queue.read(count=self.cfg.learner.groups_per_step * 2):
                await self.accept(delivery)
            if len(self.buffer) >= self.cfg.learner.groups_per_step:
                await self.step()
        if self.state.step >= self.cfg.learner.total_steps:
            self.finished.set()
            log.info("training finished at step %d", self.state.step)

    async def admit(self) -> int:
        lc = self.cfg.learner
        budget = admission_budget(
            admitted=self.admitted,
            resolved=self.state.groups_applied + self.state.groups_dropped,
            groups_per_step=lc.groups_per_step,
            max_staleness=lc.max_staleness,
            total_groups=self.total_groups,
            dropped=self.state.groups_dropped,
        )
        if budget <= 0:
            return 0
        spans = telemetry.admissions(budget)
        tasks = await admit_tasks(self.client, self.keys, self.admitted, budget, self._make_task, spans.traceparents)
        spans.end(tasks)
        self.admitted += budget
        return budget

    def _make_task(self, index: int) -> sample_pb2.PromptTask:
        size = self.rt.task.size("train")
        epoch, local = (index // size, index % size) if size else (0, index)
        example = self.rt.task.example(local, "train")
        tc = self.cfg.task
        return example_to_task(
            example,
            run_id=self.cfg.run.run_id,
            epoch=epoch,
            index=index,
            prompt_token_ids=self.rt.encode(example.prompt),
            n=tc.n,
            k=tc.k,
            step=self.state.step,
        )

    async def accept(self, delivery: Delivery) -> None:
        """Buffer a complete group, count a dropped one, skip a duplicate, dead-letter garbage."""
        try:
            group = parse_message(sample_pb2.SampleGroup, delivery.data, "SampleGroup")
            if group.status == sample_pb2.GROUP_STATUS_COMPLETE:
                check_group(group)
        except InvalidInput as err:
            log.warning("dead-lettering group entry %s: %s", delivery.entry_id, err)
            await self.queue.dead_letter(self.keys.dead, delivery, str(err))
            return
        if group.group_id in self._resolved or group.group_id in self._buffered:
            self.state.groups_duplicate += 1
            await self.queue.ack([delivery.entry_id])
            return
        telemetry.learner_received(group, delivery.traceparent)
        if group.status != sample_pb2.GROUP_STATUS_COMPLETE:
            log.info("group %s dropped by %s: %s", group.group_id, group.producer, group.drop_reason)
            self._resolve(group.group_id, delivery.entry_id)
            self.state.groups_dropped += 1
            return
        self.buffer.append(_Pending(delivery, group))
        self._buffered.add(group.group_id)

    def _resolve(self, group_id: str, entry_id: str) -> None:
        self._buffered.discard(group_id)
        self._resolved.add(group_id)
        self.state.resolved_ids.append(group_id)
        self.unacked.append(entry_id)

    async def step(self) -> dict[str, Any]:
        lc = self.cfg.learner
        take, self.buffer = self.buffer[: lc.groups_per_step], self.buffer[lc.groups_per_step :]
        groups = [p.group for p in take]
        batch = groups_to_batch(groups, self.rt.pad_id)
        t0 = time.monotonic()
        metrics = await asyncio.to_thread(
            train_step,
            self.rt.model,
            self.rt.optimizer,
            batch,
            lc,
            temperature=self.cfg.model.temperature,
            top_p=self.cfg.model.top_p,
            device=self.rt.device,
            ref_model=self.rt.ref_model,
            autocast_dtype=self.rt.autocast_dtype,
        )
        for p in take:
            self._resolve(p.group.group_id, p.delivery.entry_id)
        staleness = [self.state.policy_version - v for v in batch.policy_versions]
        self.state.step += 1
        self.state.policy_version += 1
        self.state.groups_applied += len(take)
        if self.state.step % lc.checkpoint_every_steps == 0 or self.state.step >= lc.total_steps:
            await asyncio.to_thread(
                save_checkpoint,
                self.run_dir / "checkpoints",
                self.state,
                self.rt.model,
                self.rt.optimizer,
                lc.keep_checkpoints,
            )
            await self.queue.ack(self.unacked)
            self.unacked = []
        await self._publish()
        now = time.monotonic()
        self.clock.busy_s += now - t0
        record = self._record(metrics, batch.rewards, batch.ks, staleness, now)
        telemetry.learner_step(record, [(p.group, p.delivery.traceparent) for p in take], t0)
        self.clock.last_step = now
        with self.metrics_path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        return record

    async def _publish(self) -> None:
        self.publish_weights(self.state.policy_version, self.rt.model)
        # Announce after the snapshot exists, so a replica that sees the version can fetch it.
        await self.client.set(self.keys.policy, self.state.policy_version)

    def _record(
        self,
        metrics: dict[str, float],
        rewards: list[list[float]],
        ks: list[int],
        staleness: list[int],
        now: float,
    ) -> dict[str, Any]:
        max_k = [float(rspo_core.max_at_k(torch.tensor(r, dtype=torch.float64), k)) for r, k in zip(rewards, ks)]
        pass_k = [float(rspo_core.pass_at_k(len(r), sum(1 for x in r if x >= 1.0), k)) for r, k in zip(rewards, ks)]
        step_s = now - self.clock.last_step
        return {
            "step": self.state.step,
            "time_s": round(now - self.clock.started, 3),
            "policy_version": self.state.policy_version,
            "groups_applied": self.state.groups_applied,
            "groups_dropped": self.state.groups_dropped,
            "groups_duplicate": self.state.groups_duplicate,
            "groups_per_s": len(rewards) / step_s if step_s > 0 else 0.0,
            # Unbiased Max@k of the training groups (equals Pass@k when rewards are 0/1).
            "max_at_k": sum(max_k) / len(max_k),
            # Unbiased Pass@k of the training groups (a response passes with reward >= 1).
            "pass_at_k": sum(pass_k) / len(pass_k),
            "staleness_mean": sum(staleness) / len(staleness),
            "staleness_max": max(staleness),
            "learner_busy_ratio": self.clock.busy_s / max(now - self.clock.started, 1e-9),
            "buffered": len(self.buffer),
            "in_flight": self.admitted - self.state.groups_applied - self.state.groups_dropped,
            **metrics,
        }
