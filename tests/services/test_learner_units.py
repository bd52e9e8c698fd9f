"""Learner pieces in isolation: admission budget, batch layout, per-group advantages, checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import rspo_core
from rspo_proto.v1 import reward_pb2, sample_pb2
from services.common.codec import check_group, groups_to_batch
from services.common.errors import InvalidInput
from services.learner.admission import admission_budget
from services.learner.checkpoint import LearnerState, latest_checkpoint, load_checkpoint, save_checkpoint
from services.learner.step import group_advantages


@pytest.mark.parametrize(
    ("admitted", "resolved", "dropped", "expected"),
    [
        (0, 0, 0, 6),  # empty pipeline: fill the window (max_staleness 2 -> 3 steps x 2 groups)
        (6, 0, 0, 0),  # window full
        (6, 2, 0, 2),  # one step applied: two slots free
        (10, 8, 0, 0),  # only total_groups=10 are ever needed
        (10, 8, 2, 2),  # two were dropped: they are replaced
    ],
)
def test_admission_budget(admitted: int, resolved: int, dropped: int, expected: int) -> None:
    got = admission_budget(
        admitted=admitted, resolved=resolved, groups_per_step=2, max_staleness=2, total_groups=10, dropped=dropped
    )
    assert got == expected


def make_group(gid: str, prompt: list[int], responses: list[list[int]], rewards: list[float], k: int = 2):  # type: ignore[no-untyped-def]
    task = sample_pb2.PromptTask(group_id=gid, prompt_token_ids=prompt, n=len(responses), k=k)
    samples = [
        sample_pb2.Sample(
            token_ids=r,
            logprobs=[-0.5 - j for j in range(len(r))],
            policy_version=3,
            reward=reward_pb2.Reward(value=v, status=reward_pb2.REWARD_STATUS_OK),
        )
        for r, v in zip(responses, rewards)
    ]
    return sample_pb2.SampleGroup(group_id=gid, task=task, samples=samples, status=sample_pb2.GROUP_STATUS_COMPLETE)


def test_batch_aligns_response_positions_with_next_token_predictions() -> None:
    g = make_group("g", [1, 2, 3], [[7, 8], [9]], [1.0, 0.0])
    b = groups_to_batch([g], pad_id=0)
    assert b.input_ids.tolist() == [[1, 2, 3, 7, 8], [1, 2, 3, 9, 0]]
    assert b.attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    # logits at position 2 predict token 3 (the first response token), and so on.
    assert b.response_mask.tolist() == [[0, 0, 1, 1], [0, 0, 1, 0]]
    assert b.old_logprobs[0, 2:].tolist() == [-0.5, -1.5] and b.old_logprobs[1, 2].item() == -0.5
    assert b.rewards == [[1.0, 0.0]] and b.ks == [2] and b.policy_versions == [3, 3]


def test_partial_or_unscored_groups_are_rejected() -> None:
    g = make_group("g", [1], [[2], [3]], [1.0, 0.0])
    g.samples[1].reward.status = reward_pb2.REWARD_STATUS_TIMEOUT
    with pytest.raises(InvalidInput, match="never trained on partially"):
        check_group(g)
    short = make_group("h", [1], [[2], [3]], [1.0, 0.0])
    del short.samples[1]
    with pytest.raises(InvalidInput, match="task asked for n=2"):
        check_group(short)


def test_group_advantages_use_each_groups_own_n_and_k() -> None:
    rewards = [[1.0, 0.0, 0.0, 0.0], [0.9, 0.1, 0.5], [0.0, 1.0, 0.0, 0.0]]
    ks = [2, 3, 2]
    got = group_advantages(rewards, ks, "rspo")
    expected = torch.cat(
        [
            rspo_core.compute_advantages(torch.tensor([r], dtype=torch.float64), k, "rspo")[0]
            for r, k in zip(rewards, ks)
        ]
    )
    assert torch.allclose(got.double(), expected, atol=1e-6)
    assert got.shape == (11,)


def test_checkpoint_round_trip_and_latest_marker(tmp_path: Path) -> None:
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    root = tmp_path / "ck"
    for step in (1, 2, 3):
        save_checkpoint(root, LearnerState(step=step, resolved_ids=[f"g{step}"]), model, opt, keep=2)
    assert sorted(p.name for p in root.glob("step-*")) == ["step-000002", "step-000003"]
    path = latest_checkpoint(root)
    assert path is not None and path.name == "step-000003"
    fresh = torch.nn.Linear(3, 2)
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=0.1)
    state = load_checkpoint(path, fresh, fresh_opt, torch.device("cpu"))
    assert state.step == 3 and state.resolved_ids == ["g3"]
    assert torch.equal(fresh.weight, model.weight)
    assert fresh_opt.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]
    # A half-written checkpoint (no LATEST update) is invisible.
    (root / ".tmp-step-000004").mkdir()
    assert latest_checkpoint(root) == path


@pytest.mark.gpu
def test_bf16_autocast_step_on_gpu() -> None:
    """Needs a CUDA GPU (excluded by default; run with `-m gpu` on a GPU machine)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from services.common.config import LearnerConfig
    from services.learner.step import train_step

    device = torch.device("cuda")
    model = LlamaForCausalLM(
        LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, vocab_size=32)
    ).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = groups_to_batch([make_group("g", [1, 2, 3], [[7, 8], [9, 4], [5], [6]], [1.0, 0.0, 0.0, 0.0])], pad_id=0)
    before = [p.detach().clone() for p in model.parameters()]
    metrics = train_step(
        model, opt, batch, LearnerConfig(), temperature=1.0, top_p=1.0, device=device, autocast_dtype=torch.bfloat16
    )
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay float32
    assert torch.isfinite(torch.tensor(metrics["loss/loss"]))
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_fresh_run_dir_only_deletes_what_looks_like_a_run(tmp_path: Path) -> None:
    from services.common.errors import ConfigError
    from services.launcher import prepare_run_dir

    precious = tmp_path / "home"
    precious.mkdir()
    (precious / "thesis.tex").write_text("do not delete")
    with pytest.raises(ConfigError, match="does not look like an rspo run directory"):
        prepare_run_dir(precious, fresh=True)
    assert (precious / "thesis.tex").is_file()
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "metrics.jsonl").write_text("{}\n")
    prepare_run_dir(run, fresh=False)  # resume: untouched
    assert (run / "metrics.jsonl").is_file()
    prepare_run_dir(run, fresh=True)
    assert run.is_dir() and not any(run.iterdir())
