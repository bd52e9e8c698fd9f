"""Learner overhead: one `train_step` (rspo_core advantages + policy_loss + metrics) vs a bare PyTorch
forward/backward/AdamW step on the same model and the same batch, in the same run.

Overhead = (learner step time / bare step time) - 1; target under 10%. Runs on CPU here; pass
`--device cuda` on a GPU machine. Writes bench/results/learner_overhead.{json,md}.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch
from benchlib import write_results
from transformers import LlamaConfig, LlamaForCausalLM

from services.common.codec import TrainBatch
from services.common.config import LearnerConfig
from services.learner.step import train_step

SHAPES: dict[str, dict[str, int]] = {
    "tiny": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 32},
    "small": {"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4, "vocab_size": 2048},
}


def make_batch(groups: int, n: int, prompt_len: int, resp_len: int, vocab: int) -> TrainBatch:
    g = torch.Generator().manual_seed(0)
    total, length = groups * n, prompt_len + resp_len
    resp_mask = torch.zeros(total, length - 1)
    resp_mask[:, prompt_len - 1 :] = 1.0
    rewards = (torch.rand(groups, n, generator=g) < 0.3).double().tolist()
    return TrainBatch(
        input_ids=torch.randint(0, vocab, (total, length), generator=g),
        attention_mask=torch.ones(total, length, dtype=torch.long),
        response_mask=resp_mask,
        old_logprobs=-torch.rand(total, length - 1, generator=g) * resp_mask,
        rewards=rewards,
        ks=[4] * groups,
        group_sizes=[n] * groups,
        policy_versions=[0] * total,
        group_ids=[str(i) for i in range(groups)],
    )


def bare_step(model: torch.nn.Module, opt: torch.optim.Optimizer, batch: TrainBatch, adv: torch.Tensor) -> None:
    """The minimum any trainer does: forward, token logprobs, weighted sum, backward, clip, step."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1].float()
    logp = logits.log_softmax(-1).gather(-1, batch.input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    loss = -(adv[:, None] * logp * batch.response_mask).sum() / len(adv)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()


def timed(fn: Any, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def run(shape: str, device: str, repeats: int) -> dict[str, Any]:
    torch.manual_seed(0)
    dims: dict[str, Any] = dict(SHAPES[shape])
    model: Any = LlamaForCausalLM(LlamaConfig(**dims, intermediate_size=4 * dims["hidden_size"]))
    model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    batch = make_batch(groups=8, n=16, prompt_len=16, resp_len=16, vocab=SHAPES[shape]["vocab_size"])
    cfg = LearnerConfig()
    adv = torch.randn(8 * 16)
    dev = torch.device(device)

    def ours() -> None:
        train_step(model, opt, batch, cfg, temperature=1.0, top_p=1.0, device=dev)

    def bare() -> None:
        bare_step(model, opt, batch, adv)

    for fn in (ours, bare):  # warm-up
        fn()
    ours_t, bare_t = [], []
    for _ in range(repeats):  # interleave so drift hits both alike
        ours_t += timed(ours, 1)
        bare_t += timed(bare, 1)
    o, b = statistics.median(ours_t), statistics.median(bare_t)
    return {"shape": shape, "device": device, "learner_step_s": o, "bare_step_s": b, "overhead": o / b - 1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    rows = [run(shape, args.device, args.repeats) for shape in SHAPES]
    lines = [
        "## Learner step overhead vs bare PyTorch step (same model, same batch: 8 groups x 16 samples x 32 tokens)",
        "",
        "| model | device | learner step | bare step | overhead |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['shape']} | {r['device']} | {r['learner_step_s'] * 1e3:.2f} ms | {r['bare_step_s'] * 1e3:.2f} ms "
            f"| {r['overhead'] * 100:+.1f}% |"
        )
    lines.append("")
    lines.append(f"Median of {args.repeats} interleaved runs each. Target: overhead under 10%.")
    print("\n".join(lines))
    write_results("learner_overhead", {"rows": rows}, "\n".join(lines))


if __name__ == "__main__":
    main()
