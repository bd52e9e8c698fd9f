"""The one place where wire messages (protobuf) become tensors and back.

Services never hand protos to `rspo_core`, and `rspo_core` never sees a proto:
`groups_to_batch` turns complete `SampleGroup`s into a `TrainBatch` of padded
tensors, and the `*_to_proto` helpers build wire messages from plain values.

Shapes: B groups, n samples per group (may differ between groups), N = total
samples, L = longest prompt+response length.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from rspo_proto.v1 import reward_pb2, sample_pb2
from services.common.errors import InvalidInput
from services.tasks.base import Example

FINISH_TO_PROTO = {"stop": sample_pb2.FINISH_REASON_STOP, "length": sample_pb2.FINISH_REASON_LENGTH}


def make_group_id(run_id: str, epoch: int, index: int) -> str:
    """Deterministic group id: the same admitted prompt always has the same id."""
    return f"{run_id}/{epoch}/{index}"


def example_to_task(
    example: Example,
    *,
    run_id: str,
    epoch: int,
    index: int,
    prompt_token_ids: Sequence[int],
    n: int,
    k: int,
    step: int,
) -> sample_pb2.PromptTask:
    return sample_pb2.PromptTask(
        group_id=make_group_id(run_id, epoch, index),
        run_id=run_id,
        dataset_index=index,
        epoch=epoch,
        task=example.task,
        prompt_text=example.prompt,
        prompt_token_ids=list(prompt_token_ids),
        reference_json=json.dumps(example.reference, sort_keys=True),
        n=n,
        k=k,
        admitted_at_step=step,
        admitted_unix_ns=time.time_ns(),
    )


def parse_message(cls: type, data: bytes, what: str):  # type: ignore[no-untyped-def]
    """Deserialize a stream payload; a malformed one raises InvalidInput (it goes to the dead letters)."""
    msg = cls()
    try:
        msg.ParseFromString(data)
    except Exception as err:  # protobuf raises DecodeError, sometimes others on garbage
        raise InvalidInput(f"malformed {what} payload ({len(data)} bytes): {err}") from None
    return msg


def check_group(group: sample_pb2.SampleGroup) -> None:
    """Validate a COMPLETE group before training on it; raises InvalidInput with the reason."""
    task = group.task
    if not group.group_id or group.group_id != task.group_id:
        raise InvalidInput(f"group id {group.group_id!r} does not match its task {task.group_id!r}")
    if len(group.samples) != task.n:
        raise InvalidInput(f"group {group.group_id} has {len(group.samples)} samples, task asked for n={task.n}")
    if task.k < 1 or task.k > task.n:
        raise InvalidInput(f"group {group.group_id}: k={task.k} outside [1, n={task.n}]")
    for i, s in enumerate(group.samples):
        if s.reward.status != reward_pb2.REWARD_STATUS_OK:
            raise InvalidInput(f"group {group.group_id} sample {i} has no OK reward (never trained on partially)")
        if len(s.logprobs) != len(s.token_ids) or not s.token_ids:
            raise InvalidInput(
                f"group {group.group_id} sample {i}: {len(s.token_ids)} tokens, {len(s.logprobs)} logprobs"
            )


@dataclass
class TrainBatch:
    """Padded tensors for one learner step (right padding)."""

    input_ids: torch.Tensor  # (N, L) long: prompt + response tokens
    attention_mask: torch.Tensor  # (N, L) long
    response_mask: torch.Tensor  # (N, L-1) float: 1 where position t predicts a response token
    old_logprobs: torch.Tensor  # (N, L-1) float32: generation-time logprobs at those positions
    rewards: list[list[float]]  # B rows of n_b rewards
    ks: list[int]  # (B,) target k per group
    group_sizes: list[int]  # (B,) n_b
    policy_versions: list[int]  # (N,) version that produced each sample
    group_ids: list[str]


def groups_to_batch(groups: Sequence[sample_pb2.SampleGroup], pad_id: int) -> TrainBatch:
    seqs: list[list[int]] = []
    starts: list[int] = []
    olds: list[list[float]] = []
    versions: list[int] = []
    for g in groups:
        prompt = list(g.task.prompt_token_ids)
        for s in g.samples:
            seqs.append(prompt + list(s.token_ids))
            starts.append(len(prompt))
            olds.append(list(s.logprobs))
            versions.append(int(s.policy_version))
    n_total, length = len(seqs), max(len(s) for s in seqs)
    input_ids = torch.full((n_total, length), pad_id, dtype=torch.long)
    attention = torch.zeros((n_total, length), dtype=torch.long)
    resp_mask = torch.zeros((n_total, length - 1), dtype=torch.float32)
    old = torch.zeros((n_total, length - 1), dtype=torch.float32)
    for i, (seq, p, lp) in enumerate(zip(seqs, starts, olds)):
        input_ids[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        attention[i, : len(seq)] = 1
        # Position t predicts token t+1: response tokens p..p+R-1 are predicted at p-1..p+R-2.
        resp_mask[i, p - 1 : p - 1 + len(lp)] = 1.0
        old[i, p - 1 : p - 1 + len(lp)] = torch.tensor(lp, dtype=torch.float32)
    return TrainBatch(
        input_ids=input_ids,
        attention_mask=attention,
        response_mask=resp_mask,
        old_logprobs=old,
        rewards=[[s.reward.value for s in g.samples] for g in groups],
        ks=[int(g.task.k) for g in groups],
        group_sizes=[len(g.samples) for g in groups],
        policy_versions=versions,
        group_ids=[g.group_id for g in groups],
    )


def ok_reward(value: float, message: str = "") -> reward_pb2.Reward:
    return reward_pb2.Reward(value=value, status=reward_pb2.REWARD_STATUS_OK, message=message)
