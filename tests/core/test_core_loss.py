"""policy_loss: exact REINFORCE gradient, clipping at its boundaries, masking, KL, scaling."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from rspo_core import PolicyLossConfig, PolicyLossInputs, compute_advantages, policy_loss

V, T, N = 5, 4, 6  # vocab, tokens, responses (one group of n = 6)


class TinyPolicy(torch.nn.Module):
    """logits(t) = W[prev_token] + b[t]: a tiny autoregressive policy with shared parameters."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = torch.nn.Parameter(torch.randn(V + 1, V, generator=g, dtype=torch.float64))
        self.b = torch.nn.Parameter(torch.randn(T, V, generator=g, dtype=torch.float64))

    def token_logprobs(self, tokens: torch.Tensor) -> torch.Tensor:  # (N, T) -> (N, T)
        prev = torch.cat([torch.full_like(tokens[:, :1], V), tokens[:, :-1]], dim=1)  # BOS = V
        logits = self.w[prev] + self.b.unsqueeze(0)  # (N, T, V)
        return torch.log_softmax(logits, dim=-1).gather(2, tokens.unsqueeze(2)).squeeze(2)


def _batch() -> tuple[TinyPolicy, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, V, (N, T), generator=g)
    lengths = torch.tensor([4, 2, 3, 1, 4, 2])
    mask = torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)  # (N, T)
    rewards = torch.tensor([[0.9, 0.1, 0.5, 0.5, 0.0, 0.7]], dtype=torch.float64)
    adv = compute_advantages(rewards, 3, "rspo")[0]  # (N,) mean form
    return TinyPolicy(), tokens, mask, adv


def _grads(model: TinyPolicy) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters()])  # type: ignore[union-attr]


@pytest.mark.parametrize("variant", ["sequence", "token_sum", "sequence_clip_onpolicy", "token_sum_clip_onpolicy"])
def test_gradient_equals_sum_of_c_times_score(variant: str) -> None:
    model, tokens, mask, adv = _batch()
    lp = model.token_logprobs(tokens)
    mode = "sequence" if variant.startswith("sequence") else "token_sum"
    clip = 0.2 if "clip" in variant else None
    out = policy_loss(PolicyLossInputs(lp, lp.detach(), adv, mask), PolicyLossConfig(mode=mode, clip_eps=clip))
    out.loss.backward()
    got = _grads(model)
    # manual: sum_i c_i grad log pi(y_i), c = A / n, one response at a time
    manual = torch.zeros_like(got)
    c = adv / N
    for i in range(N):
        model.zero_grad()
        seq_lp = (model.token_logprobs(tokens[i : i + 1])[0] * mask[i]).sum()
        seq_lp.backward()
        manual += c[i] * _grads(model)
    model.zero_grad()
    torch.testing.assert_close(got, -manual, rtol=1e-12, atol=1e-14)  # loss is minimised: grad = -g
    assert out.metrics["ratio_mean"] == pytest.approx(1.0) and out.metrics["clip_fraction"] == 0.0


def _one(ratio: float, adv: float, mode: str, clip_eps: float = 0.2) -> tuple[float, dict[str, float], torch.Tensor]:
    lp = torch.zeros(1, 2, dtype=torch.float64, requires_grad=True)
    log_r = math.log(ratio)
    # sequence mode: the whole log-ratio sits on token 0; token modes: each token has ratio `ratio`
    old = torch.tensor([[-log_r, 0.0 if mode == "sequence" else -log_r]], dtype=torch.float64)
    inputs = PolicyLossInputs(lp, old, torch.tensor([adv], dtype=torch.float64), torch.ones(1, 2, dtype=torch.bool))
    out = policy_loss(inputs, PolicyLossConfig(mode=mode, clip_eps=clip_eps))  # type: ignore[arg-type]
    out.loss.backward()
    assert lp.grad is not None
    return out.loss.item(), out.metrics, lp.grad


@pytest.mark.parametrize("mode", ["sequence", "token_sum", "token_mean"])
def test_clipping_boundaries(mode: str) -> None:
    eps, d = 0.2, 1e-6
    cases = [  # (ratio, advantage, clipped?)
        (1 + eps - d, 1.0, False),
        (1 + eps + d, 1.0, True),
        (1 - eps - d, 1.0, False),  # positive advantage below 1 - eps: min picks the unclipped term
        (1 - eps + d, -1.0, False),
        (1 - eps - d, -1.0, True),
        (1 + eps + d, -1.0, False),  # negative advantage above 1 + eps: unclipped (pessimistic) term
    ]
    for ratio, adv, clipped in cases:
        _, metrics, grad = _one(ratio, adv, mode, eps)
        if clipped:
            assert bool((grad == 0).all()), (mode, ratio, adv)
            assert metrics["clip_fraction"] == 1.0
        else:
            assert bool((grad != 0).all()) if mode != "sequence" else grad[0, 0] != 0
            assert metrics["clip_fraction"] == 0.0
            # d loss / d lp_t = -A * ratio / denom (sequence: every token shares the sequence ratio)
            denom = 2 if mode == "token_mean" else 1
            assert float(grad[0, 0]) == pytest.approx(-adv * ratio / denom, rel=1e-9)
        assert metrics["ratio_max"] == pytest.approx(ratio, rel=1e-9)


@pytest.mark.parametrize("mode", ["sequence", "token_mean", "token_sum"])
@pytest.mark.parametrize("clip", [None, 0.2])
def test_masked_tokens_contribute_nothing(mode: str, clip: float | None) -> None:
    g = torch.Generator().manual_seed(3)
    base = torch.randn(N, T, generator=g, dtype=torch.float64) - 1.0
    old = base + 0.05 * torch.randn(N, T, generator=g, dtype=torch.float64)
    ref = base + 0.1 * torch.randn(N, T, generator=g, dtype=torch.float64)
    mask = torch.rand(N, T, generator=g) < 0.6
    adv = torch.randn(N, generator=g, dtype=torch.float64)
    cfg = PolicyLossConfig(mode=mode, clip_eps=clip, kl_coef=0.1)  # type: ignore[arg-type]
    results = []
    for fill in (0.0, -1e3, float("-inf"), float("nan")):
        lp = torch.where(mask, base, torch.full_like(base, fill)).requires_grad_(True)
        o = torch.where(mask, old, torch.full_like(old, fill))
        rf = torch.where(mask, ref, torch.full_like(ref, fill))
        out = policy_loss(PolicyLossInputs(lp, o, adv, mask, rf), cfg)
        out.loss.backward()
        assert lp.grad is not None and bool((lp.grad[~mask] == 0).all())
        results.append((out.loss.detach(), lp.grad.clone(), out.metrics))
    for loss, grad, metrics in results[1:]:
        assert torch.equal(loss, results[0][0]) and torch.equal(grad, results[0][1])
        assert metrics == results[0][2]


def test_token_sum_equals_sequence_without_clip_and_token_mean_divides_by_tokens() -> None:
    g = torch.Generator().manual_seed(4)
    lp = torch.randn(N, T, generator=g, dtype=torch.float64)
    mask = torch.rand(N, T, generator=g) < 0.7
    adv = torch.randn(N, generator=g, dtype=torch.float64)
    x = PolicyLossInputs(lp, lp, adv, mask)
    seq = policy_loss(x, PolicyLossConfig(mode="sequence")).loss
    tsum = policy_loss(x, PolicyLossConfig(mode="token_sum")).loss
    tmean = policy_loss(x, PolicyLossConfig(mode="token_mean")).loss
    torch.testing.assert_close(seq, tsum)
    torch.testing.assert_close(tmean, tsum * N / mask.sum())
    want = -(adv * torch.where(mask, lp, 0.0).sum(1)).mean()
    torch.testing.assert_close(seq, want)


def test_batch_std_is_one_scalar_and_kl_k3() -> None:
    g = torch.Generator().manual_seed(5)
    lp = torch.randn(N, T, generator=g, dtype=torch.float64)
    mask = torch.ones(N, T, dtype=torch.bool)
    adv = 3.0 * torch.randn(N, generator=g, dtype=torch.float64)
    out = policy_loss(PolicyLossInputs(lp, lp, adv, mask), PolicyLossConfig(advantage_scale="batch_std"))
    scale = 1.0 / (float(adv.std(unbiased=False)) + 1e-8)
    assert out.metrics["advantage_scale"] == pytest.approx(scale)
    plain = policy_loss(PolicyLossInputs(lp, lp, adv * scale, mask), PolicyLossConfig())
    torch.testing.assert_close(out.loss, plain.loss)
    assert out.metrics["adv_std"] == pytest.approx(1.0, abs=1e-6)
    # KL (k3) to the reference: 0 when equal, positive otherwise, gradient 0 at ref == lp
    lp_req = lp.clone().requires_grad_(True)
    cfg = PolicyLossConfig(kl_coef=0.5)
    zero_adv = torch.zeros(N, dtype=torch.float64)
    same = policy_loss(PolicyLossInputs(lp_req, lp, zero_adv, mask, lp.clone()), cfg)
    same.loss.backward()
    assert same.metrics["kl_ref"] == 0.0 and same.loss.item() == 0.0
    assert lp_req.grad is not None and bool((lp_req.grad.abs() < 1e-15).all())
    ref = lp + 0.3
    diff = policy_loss(PolicyLossInputs(lp, lp, zero_adv, mask, ref), cfg)
    k3 = math.exp(0.3) - 0.3 - 1
    assert diff.metrics["kl_ref"] == pytest.approx(k3)
    assert diff.loss.item() == pytest.approx(0.5 * k3 * T)  # per-response sum averaged over responses
    with pytest.raises(ValueError, match=r"needs inputs\.ref_logprobs"):
        policy_loss(PolicyLossInputs(lp, lp, zero_adv, mask), cfg)


def test_metrics_keys_and_kl_old_new() -> None:
    lp = torch.full((2, 3), -1.0, dtype=torch.float64)
    old = torch.full((2, 3), -0.9, dtype=torch.float64)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    out = policy_loss(PolicyLossInputs(lp, old, torch.tensor([1.0, -1.0]), mask), PolicyLossConfig(clip_eps=0.2))
    expected = {
        "loss", "pg_loss", "kl_loss", "ratio_mean", "ratio_min", "ratio_max", "clip_fraction", "kl_old_new",
        "adv_mean", "adv_std", "adv_abs_max", "advantage_scale", "tokens", "sequences",
    }  # fmt: skip
    assert expected <= set(out.metrics) and all(isinstance(v, float) for v in out.metrics.values())
    assert out.metrics["tokens"] == 3.0
    assert out.metrics["kl_old_new"] == pytest.approx(0.1)
    assert out.metrics["ratio_min"] == pytest.approx(math.exp(-0.2))  # sequence ratio of the 2-token response
    assert out.metrics["ratio_max"] == pytest.approx(math.exp(-0.1))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mode": "seq"}, "mode must be one of"),
        ({"clip_eps": 0.0}, "clip_eps must be > 0"),
        ({"kl_coef": -1.0}, "kl_coef must be >= 0"),
        ({"advantage_scale": "prompt_std"}, "never per-prompt std"),
    ],
)
def test_config_validation(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        PolicyLossConfig(**kwargs)  # type: ignore[arg-type]


def test_input_shapes_validated() -> None:
    lp = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="advantages must be"):
        PolicyLossInputs(lp, lp, torch.zeros(2, 1), torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="old_logprobs shape"):
        PolicyLossInputs(lp, torch.zeros(2, 4), torch.zeros(2), torch.ones(2, 3, dtype=torch.bool))


def test_config_mirrors_service_loss_config() -> None:
    config = pytest.importorskip("services.common.config")
    fields = config.LossConfig.model_fields
    ours = {f.name: f.default for f in dataclasses.fields(PolicyLossConfig)}
    assert set(fields) == set(ours)
    assert {name: f.default for name, f in fields.items()} == ours
    svc = config.LossConfig()
    PolicyLossConfig(**svc.model_dump())  # a service config converts directly
