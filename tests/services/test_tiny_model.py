"""builtin:tiny: built once, reused, loaded through the stock from_pretrained path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from services.common.errors import ConfigError
from services.common.tiny_model import (
    MARKER,
    build_tiny_model,
    load_model_and_tokenizer,
    resolve_device,
    resolve_model_path,
)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(resolve_model_path("builtin:tiny", tmp_path_factory.getbasetemp() / "models"))


def test_builds_folder_with_marker_and_reuses_it(tiny_dir: Path) -> None:
    for name in ("config.json", "model.safetensors", "tokenizer.json", MARKER):
        assert (tiny_dir / name).is_file(), name
    stamp = (tiny_dir / "model.safetensors").stat().st_mtime_ns
    assert build_tiny_model(tiny_dir) == tiny_dir
    assert (tiny_dir / "model.safetensors").stat().st_mtime_ns == stamp  # reused, not rebuilt


def test_different_settings_rebuild(tmp_path: Path) -> None:
    a = build_tiny_model(tmp_path / "m", hidden_size=32, num_heads=2)
    assert json.loads((a / MARKER).read_text())["hidden_size"] == 32
    build_tiny_model(tmp_path / "m", hidden_size=16, num_heads=2)
    assert json.loads((a / MARKER).read_text())["hidden_size"] == 16


def test_same_seed_same_weights(tmp_path: Path) -> None:
    m1, _ = load_model_and_tokenizer(str(build_tiny_model(tmp_path / "a", seed=3)))
    m2, _ = load_model_and_tokenizer(str(build_tiny_model(tmp_path / "b", seed=3)))
    for (n1, p1), (_, p2) in zip(m1.state_dict().items(), m2.state_dict().items(), strict=True):
        assert torch.equal(p1, p2), n1


def test_tokenizer_and_model_load_like_a_hub_model(tiny_dir: Path) -> None:
    model, tok = load_model_and_tokenizer(str(tiny_dir), "float32", "cpu")
    ids = tok("3 7 1 =")["input_ids"]
    assert ids[0] == tok.bos_token_id and len(ids) == 5
    assert tok.decode(ids, skip_special_tokens=True) == "3 7 1 ="
    assert tok.convert_tokens_to_ids("<eos>") == tok.eos_token_id
    assert tok.pad_token_id is not None and tok.pad_token_id != tok.eos_token_id
    assert model.config.tie_word_embeddings and model.config.max_position_embeddings == 64
    assert model.config.vocab_size == len(tok)
    logits = model(input_ids=torch.tensor([ids])).logits
    assert logits.shape == (1, 5, len(tok))
    bf, _ = load_model_and_tokenizer(str(tiny_dir), "bfloat16", "cpu")
    assert next(bf.parameters()).dtype == torch.bfloat16


def test_other_names_pass_through_and_bad_ones_fail(tmp_path: Path) -> None:
    assert resolve_model_path("Qwen/Qwen2.5-0.5B", tmp_path) == "Qwen/Qwen2.5-0.5B"
    assert resolve_model_path("/models/x", tmp_path) == "/models/x"
    with pytest.raises(ConfigError, match="builtin"):
        resolve_model_path("builtin:huge", tmp_path)
    with pytest.raises(ConfigError, match="resolve_model_path"):
        load_model_and_tokenizer("builtin:tiny")


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(ConfigError):
        resolve_device("tpu-ish")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA"):
            resolve_device("cuda")
