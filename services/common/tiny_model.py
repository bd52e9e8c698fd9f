"""A tiny random-init causal LM with a word-level tokenizer, plus the one model-loading path.

No model hub is reachable on the machines this project runs on, so `builtin:tiny` builds a small
Llama (random init, tied embeddings) and a whitespace word-level tokenizer in-process and
`save_pretrained`s both to a folder. Everything downstream then loads that folder with the same
`AutoModelForCausalLM` / `AutoTokenizer.from_pretrained` code a real hub model uses, so the tiny
model exercises exactly the production path. A hub id or a local folder passes through unchanged.

Prompts are plain text such as "3 7 1 =", one symbol per whitespace-separated word; a response is
e.g. "7" followed by EOS. Encoding prepends BOS (the tokenizer's post-processor does it).

The folder is written under a temporary name and renamed into place, with a marker file holding
the build settings written last: a reader never sees a half-built model, and a rebuild with the
same settings is a no-op.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from services.common.errors import ConfigError

BUILTIN_TINY = "builtin:tiny"
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")
DEFAULT_SYMBOLS = ("=", ">", "<", "+", "-", "*", ",", "|", ":", ";", "?")
DEFAULT_VOCAB = tuple(str(d) for d in range(10)) + DEFAULT_SYMBOLS
MARKER = "rspo_tiny_model.json"
# Bump when the build recipe changes so stale cached folders are rebuilt.
_RECIPE_VERSION = 1
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _settings(vocab: list[str], seed: int, hidden_size: int, num_layers: int, num_heads: int) -> dict[str, Any]:
    return {
        "recipe": _RECIPE_VERSION,
        "vocab": vocab,
        "seed": seed,
        "hidden_size": hidden_size,
        "num_layers": num_layers,
        "num_heads": num_heads,
    }


def _read_marker(out_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((out_dir / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _build_tokenizer(vocab: list[str]) -> Any:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = list(SPECIAL_TOKENS) + [w for w in vocab if w not in SPECIAL_TOKENS]
    table = {w: i for i, w in enumerate(words)}
    # WordLevel over whitespace-split words: the vocabulary is given, not learned, so ids are stable
    # across builds. With no decoder, `decode` joins words with single spaces, which is the prompt format.
    tok = Tokenizer(models.WordLevel(vocab=table, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A",
        pair="<bos> $A $B",
        special_tokens=[("<bos>", table["<bos>"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=64,
    )


def build_tiny_model(
    out_dir: Path,
    *,
    vocab: list[str] | None = None,
    seed: int = 0,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
) -> Path:
    """Build (or reuse) a tiny random-init Llama + word-level tokenizer in `out_dir`; return it.

    `vocab` lists the non-special words (default: digits 0-9 and a few symbols); the special tokens
    <pad> <bos> <eos> <unk> always take ids 0-3. Same settings -> same weights (seeded init, the
    global RNG is left untouched) and the existing folder is reused.
    """
    out_dir = Path(out_dir)
    words = list(vocab) if vocab is not None else list(DEFAULT_VOCAB)
    if hidden_size % num_heads:
        raise ConfigError(f"hidden_size {hidden_size} must be divisible by num_heads {num_heads}")
    settings = _settings(words, seed, hidden_size, num_layers, num_heads)
    if _read_marker(out_dir) == settings:
        return out_dir

    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = _build_tokenizer(words)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=64,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    # fork_rng: seeding must not disturb the caller's global RNG stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / MARKER).write_text(json.dumps(settings, indent=1))  # marker last: the folder is complete
        if out_dir.exists():
            if _read_marker(out_dir) == settings:  # another process finished first
                return out_dir
            shutil.rmtree(out_dir)
        try:
            os.replace(tmp, out_dir)
        except OSError:
            # Lost a rename race to a concurrent builder; its folder is as good as ours.
            if _read_marker(out_dir) != settings:
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def resolve_model_path(name_or_path: str, cache_dir: Path) -> str:
    """'builtin:tiny' -> build it under `cache_dir` and return the folder; anything else unchanged."""
    if name_or_path == BUILTIN_TINY:
        return str(build_tiny_model(Path(cache_dir) / "builtin-tiny"))
    if name_or_path.startswith("builtin:"):
        raise ConfigError(f"unknown builtin model '{name_or_path}'; the only builtin is '{BUILTIN_TINY}'")
    return name_or_path


def resolve_device(device: str) -> torch.device:
    """'auto' -> cuda if available else cpu; otherwise the named device (validated)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ConfigError(
            f"model.device '{device}' is not a torch device ({err}); use auto, cpu, cuda or cuda:N"
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"model.device '{device}' asks for CUDA but none is available; use 'cpu' or 'auto'")
    return dev


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[dtype]
    except KeyError:
        raise ConfigError(f"dtype '{dtype}' is not supported; use one of {sorted(_DTYPES)}") from None


def load_model_and_tokenizer(
    name_or_path: str,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
    trust_remote_code: bool = False,
) -> tuple[Any, Any]:
    """Load a causal LM and its tokenizer with the stock `from_pretrained` path (eval mode).

    `name_or_path` must already be resolved (see `resolve_model_path`). A tokenizer without a pad
    token gets its EOS as pad, as most hub causal LMs need for batching.
    """
    if name_or_path.startswith("builtin:"):
        raise ConfigError(f"'{name_or_path}' must be resolved with resolve_model_path(name, cache_dir) first")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dev = resolve_device(device) if isinstance(device, str) else device
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None and tokenizer.eos_token_id is not None:
        tokenizer.pad_token = tokenizer.eos_token
    # transformers >= 4.56 names the argument `dtype` (`torch_dtype` is deprecated in 5.x).
    model: Any = AutoModelForCausalLM.from_pretrained(
        name_or_path, dtype=resolve_dtype(dtype), trust_remote_code=trust_remote_code
    )
    model = model.to(device=dev)
    model.eval()
    return model, tokenizer
