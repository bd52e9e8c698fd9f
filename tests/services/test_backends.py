"""Backend contract tests, run against every backend (vLLM ones only with -m vllm where installed)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from services.common.config import ModelConfig
from services.common.errors import ConfigError, InvalidInput
from services.common.tiny_model import load_model_and_tokenizer, resolve_model_path
from services.common.weights import PolicySnapshot, WeightAssembler
from services.rollout.backends.base import (
    BACKENDS,
    GenerationBackend,
    SamplingSettings,
    make_backend,
    sampling_logprobs,
)

PROMPTS = ["3 7 1 =", "9 =", "1 2 3 4 5 6 7 8 ="]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return resolve_model_path("builtin:tiny", tmp_path_factory.getbasetemp() / "models")


@pytest.fixture(scope="module")
def reference(model_dir: str) -> Any:
    """An independent float32 HF model on CPU: the learner's view of the same weights."""
    model, _ = load_model_and_tokenizer(model_dir, "float32", "cpu")
    return model


@pytest.fixture(
    scope="module",
    params=["transformers", pytest.param("vllm", marks=pytest.mark.vllm)],
)
def backend(request: pytest.FixtureRequest, model_dir: str) -> Iterator[GenerationBackend]:
    if request.param == "vllm":
        pytest.importorskip("vllm")
        from services.rollout.backends.vllm_backend import VllmBackend

        yield VllmBackend(model_dir, dtype="float32", gpu_memory_utilization=0.3, max_model_len=64, enforce_eager=True)
        return
    from services.rollout.backends.transformers_backend import TransformersBackend

    model, tok = load_model_and_tokenizer(model_dir, "float32", "cpu")
    yield TransformersBackend(model, tok, max_batch_rows=40)  # small: exercises chunking too


def _tol(backend: GenerationBackend) -> float:
    return 1e-4 if type(backend).__name__ == "TransformersBackend" else 2e-3  # vLLM: GPU kernels


def _forward_logprobs(model: Any, prompt: list[int], response: list[int], temperature: float, top_p: float) -> Any:
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt + response])).logits[0]  # (L, V)
    step_logits = logits[len(prompt) - 1 : -1]  # logits that predicted each response token
    return sampling_logprobs(step_logits, temperature, top_p).gather(-1, torch.tensor(response)[:, None]).squeeze(-1)


def test_n_samples_per_prompt_and_response_invariants(backend: GenerationBackend) -> None:
    prompts = [backend.encode(p) for p in PROMPTS]
    out = backend.generate(prompts, 16, SamplingSettings(max_new_tokens=20, seed=0))
    assert len(out) == len(prompts) and all(len(group) == 16 for group in out)
    reasons = set()
    for group in out:
        for g in group:
            assert 1 <= len(g.token_ids) <= 20 and len(g.logprobs) == len(g.token_ids)
            assert all(lp <= 0.0 for lp in g.logprobs)
            eos_at = [i for i, t in enumerate(g.token_ids) if t in backend.eos_token_ids]
            if g.finish_reason == "stop":
                assert eos_at == [len(g.token_ids) - 1]  # EOS is last, nothing after it
            else:
                assert g.finish_reason == "length" and not eos_at and len(g.token_ids) == 20
            assert g.text == backend.decode(g.token_ids)
            assert "<eos>" not in g.text and "<pad>" not in g.text
            reasons.add(g.finish_reason)
    assert reasons == {"stop", "length"}  # a random tiny model hits both within 20 tokens


def test_encode_adds_bos_and_decode_round_trips(backend: GenerationBackend) -> None:
    ids = backend.encode("3 7 1 =")
    assert len(ids) == 5 and backend.decode(ids) == "3 7 1 ="


@pytest.mark.parametrize(("temperature", "top_p"), [(1.0, 1.0), (0.7, 1.0), (1.3, 0.8)])
def test_logprobs_match_a_fresh_forward_pass(
    backend: GenerationBackend, reference: Any, temperature: float, top_p: float
) -> None:
    reference.load_state_dict(backend.state_dict(), strict=False)
    prompts = [backend.encode(p) for p in PROMPTS]
    out = backend.generate(
        prompts, 6, SamplingSettings(max_new_tokens=10, temperature=temperature, top_p=top_p, seed=1)
    )
    worst = 0.0
    for prompt, group in zip(prompts, out, strict=True):
        for g in group:
            expected = _forward_logprobs(reference, prompt, g.token_ids, temperature, top_p)
            assert torch.isfinite(expected).all()  # never sampled a token outside the nucleus
            worst = max(worst, (expected - torch.tensor(g.logprobs)).abs().max().item())
    assert worst < _tol(backend), worst


def test_seeded_generation_is_reproducible(backend: GenerationBackend) -> None:
    prompts = [backend.encode(p) for p in PROMPTS]
    settings = SamplingSettings(max_new_tokens=8, temperature=1.0, seed=42)
    a = backend.generate(prompts, 4, settings)
    b = backend.generate(prompts, 4, settings)
    c = backend.generate(prompts, 4, SamplingSettings(max_new_tokens=8, temperature=1.0, seed=43))
    assert [[g.token_ids for g in grp] for grp in a] == [[g.token_ids for g in grp] for grp in b]
    assert [[g.token_ids for g in grp] for grp in a] != [[g.token_ids for g in grp] for grp in c]
    # n samples of one prompt are distinct draws, not copies
    assert len({tuple(g.token_ids) for g in a[0]}) > 1


def test_bad_requests_are_invalid_input(backend: GenerationBackend) -> None:
    with pytest.raises(InvalidInput):
        backend.generate([[]], 2, SamplingSettings(max_new_tokens=4))
    with pytest.raises(InvalidInput):
        backend.generate([backend.encode("1 =")], 0, SamplingSettings(max_new_tokens=4))
    with pytest.raises(InvalidInput):
        backend.generate([[10**6]], 1, SamplingSettings(max_new_tokens=4))
    with pytest.raises(InvalidInput):
        SamplingSettings(max_new_tokens=4, top_p=0.0)
    with pytest.raises(InvalidInput):
        SamplingSettings(max_new_tokens=4, temperature=0.0)


def _perturbed(state: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: v + 0.05 * torch.randn(v.shape, generator=g).to(v.dtype) for k, v in state.items()}


def test_load_state_dict_is_atomic(backend: GenerationBackend) -> None:
    before = backend.state_dict()
    version = backend.policy_version
    good = _perturbed(before, 0)
    name = next(iter(good))
    bad_shape = dict(good)
    bad_shape[name] = good[name][:-1]
    missing = dict(good)
    missing.pop(name)
    unknown = dict(good, **{"model.not_a_weight": torch.zeros(2)})
    wrong_dtype = dict(good)
    wrong_dtype[name] = good[name].to(torch.float16)
    for bad in (bad_shape, missing, unknown, wrong_dtype):
        with pytest.raises(InvalidInput, match="rejected weights"):
            backend.load_state_dict(bad, version + 1)
        assert backend.policy_version == version
        after = backend.state_dict()
        assert all(torch.equal(after[k], before[k]) for k in before)  # not half-loaded
    with pytest.raises(InvalidInput):
        backend.load_state_dict(good, -1)


def test_load_state_dict_changes_the_policy(backend: GenerationBackend, reference: Any) -> None:
    prompt = [backend.encode("3 7 1 =")]
    settings = SamplingSettings(max_new_tokens=6, seed=5)
    old = backend.generate(prompt, 4, settings)
    new_state = _perturbed(backend.state_dict(), 1)
    backend.load_state_dict(new_state, backend.policy_version + 1)
    got = backend.state_dict()
    assert all(torch.equal(got[k], new_state[k]) for k in new_state)
    new = backend.generate(prompt, 4, settings)
    assert [g.logprobs for g in old[0]] != [g.logprobs for g in new[0]]
    # the new logprobs are those of the new weights
    reference.load_state_dict(new_state, strict=False)
    for g in new[0]:
        expected = _forward_logprobs(reference, prompt[0], g.token_ids, 1.0, 1.0)
        assert (expected - torch.tensor(g.logprobs)).abs().max().item() < _tol(backend)


def test_weights_streamed_through_snapshot_load(backend: GenerationBackend) -> None:
    state = _perturbed(backend.state_dict(), 2)
    snap = PolicySnapshot(backend.policy_version + 1, state)
    asm = WeightAssembler()
    for chunk in snap.chunks(4096):
        asm.feed(chunk)
    backend.load_state_dict(asm.finish(), asm.version)
    assert backend.policy_version == snap.version
    got = backend.state_dict()
    assert all(torch.equal(got[k], state[k]) for k in state)


def test_tied_alias_is_accepted(model_dir: str) -> None:
    from services.rollout.backends.transformers_backend import TransformersBackend

    model, tok = load_model_and_tokenizer(model_dir, "float32", "cpu")
    backend = TransformersBackend(model, tok)
    full = {k: v.clone() for k, v in model.state_dict().items()}  # includes lm_head.weight (tied)
    assert "lm_head.weight" in full and "lm_head.weight" not in backend.state_dict()
    full["model.embed_tokens.weight"] += 1.0
    full["lm_head.weight"] = full["model.embed_tokens.weight"]
    backend.load_state_dict(full, 3)
    assert torch.equal(model.lm_head.weight, full["model.embed_tokens.weight"])
    assert backend.policy_version == 3


def test_generate_and_load_do_not_interleave(model_dir: str) -> None:
    from services.rollout.backends.transformers_backend import TransformersBackend

    model, tok = load_model_and_tokenizer(model_dir, "float32", "cpu")
    backend = TransformersBackend(model, tok)
    states = [_perturbed(backend.state_dict(), s) for s in range(3)]
    errors: list[BaseException] = []

    def loader() -> None:
        try:
            for v, st in enumerate(states, start=1):
                backend.load_state_dict(st, v)
        except BaseException as err:  # surfaced below
            errors.append(err)

    t = threading.Thread(target=loader)
    t.start()
    for _ in range(5):
        backend.generate([backend.encode("1 2 =")], 8, SamplingSettings(max_new_tokens=6, seed=0))
    t.join()
    assert not errors and backend.policy_version == 3


def test_make_backend_from_config(tmp_path: Path, model_dir: str) -> None:
    cfg = ModelConfig(name_or_path=model_dir, device="cpu", max_new_tokens=4)
    backend = make_backend(cfg, "transformers", tmp_path)
    out = backend.generate([backend.encode("5 =")], 2, SamplingSettings.from_model_config(cfg, seed=0))
    assert len(out[0]) == 2
    assert set(BACKENDS) == {"transformers", "vllm"}
    with pytest.raises(ConfigError, match="unknown rollout backend"):
        make_backend(cfg, "tensorrt", tmp_path)


def test_vllm_is_imported_lazily_and_missing_vllm_is_a_config_error(tmp_path: Path, model_dir: str) -> None:
    import importlib.util
    import sys

    import services.rollout.backends.vllm_backend  # noqa: F401  (importable without vllm)

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed here")
    assert "vllm" not in sys.modules
    with pytest.raises(ConfigError, match="vLLM"):
        make_backend(ModelConfig(name_or_path=model_dir, device="cuda"), "vllm", tmp_path)
