"""The generation backend contract shared by every rollout backend (transformers, vLLM).

A backend owns one policy model and samples n responses per prompt. What it promises:

* **Logprobs are those of the sampling distribution.** `Generation.logprobs[i]` is
  log pi(token_i | prefix) under the distribution the token was actually drawn from:
  softmax(logits / temperature), restricted to the top-p nucleus and renormalised when top_p < 1.
  The learner recomputes the same quantity from a forward pass (same temperature, same top_p) to
  form importance ratios, so a backend must never report raw (temperature-1) logprobs.
* **Responses stop at EOS.** `token_ids` holds the response only, including the EOS token when one
  was emitted (finish_reason "stop"); nothing after it. Without EOS, generation stops at
  `max_new_tokens` (finish_reason "length").
* **Seeded generation is reproducible** on the same backend, device and batch: the same prompts,
  n and settings (seed set) give the same tokens.
* **Weight loads are atomic.** `load_state_dict(state, version)` validates every name, shape and
  dtype against the model before touching it, then copies under the backend's lock, so a generate
  call sees either the old weights and version or the new ones; a rejected state leaves both intact.

Backends are created by name through `make_backend`; the vLLM module is imported only when asked
for, because vLLM is an optional extra that most machines cannot install.
"""

from __future__ import annotations

import importlib
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import torch

from services.common.errors import ConfigError, InvalidInput

FinishReason = Literal["stop", "length"]


class ModelSettings(Protocol):
    """The fields of `services.common.config.ModelConfig` a backend reads.

    A protocol rather than an import keeps this package free of the config module (and pydantic).
    """

    @property
    def name_or_path(self) -> str: ...
    @property
    def dtype(self) -> str: ...
    @property
    def device(self) -> str: ...
    @property
    def temperature(self) -> float: ...
    @property
    def top_p(self) -> float: ...
    @property
    def max_new_tokens(self) -> int: ...
    @property
    def trust_remote_code(self) -> bool: ...


@dataclass(frozen=True)
class SamplingSettings:
    """How to sample. `seed=None` draws fresh randomness on every call."""

    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise InvalidInput(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise InvalidInput(f"temperature must be a positive finite number, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise InvalidInput(f"top_p must lie in (0, 1], got {self.top_p}")

    @classmethod
    def from_model_config(cls, cfg: ModelSettings, seed: int | None = None) -> SamplingSettings:
        return cls(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p, seed=seed)


@dataclass(frozen=True)
class Generation:
    """One sampled response. `logprobs` has one entry per token in `token_ids` (see module doc)."""

    token_ids: list[int]
    logprobs: list[float]
    text: str
    finish_reason: FinishReason


class GenerationBackend(ABC):
    """A policy model that samples responses and accepts new weights (see module docstring)."""

    @abstractmethod
    def generate(self, prompt_token_ids: list[list[int]], n: int, settings: SamplingSettings) -> list[list[Generation]]:
        """Sample `n` responses for each prompt; result[i][j] is sample j of prompt i."""

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Prompt token ids, including BOS when the tokenizer adds one."""

    @abstractmethod
    def decode(self, token_ids: list[int]) -> str:
        """Text of response tokens, special tokens (EOS, pad) dropped."""

    @property
    @abstractmethod
    def eos_token_ids(self) -> frozenset[int]:
        """Token ids that end a response."""

    @property
    @abstractmethod
    def policy_version(self) -> int:
        """Version of the weights currently loaded (0: the initial model)."""

    @abstractmethod
    def load_state_dict(self, state: Mapping[str, torch.Tensor], version: int) -> None:
        """Atomically replace the weights and set `policy_version` (raises InvalidInput if rejected)."""

    @abstractmethod
    def state_dict(self) -> dict[str, torch.Tensor]:
        """A CPU copy of the current weights, in the naming `load_state_dict` accepts."""


def sampling_logprobs(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """Log-probabilities of the distribution a backend samples from, for logits (..., vocab).

    float32 log_softmax(logits / temperature), and when top_p < 1 the smallest set of most likely
    tokens whose mass reaches top_p is kept (the most likely token always is), the rest get -inf,
    and the kept ones are renormalised. The learner can call this same function on its forward
    pass's logits to recompute `Generation.logprobs` exactly.
    """
    scaled = logits.float() / temperature  # (..., V); upcast first so bf16 logits are scaled in fp32
    if top_p < 1.0:
        sorted_logits, order = scaled.sort(dim=-1, descending=True)  # (..., V)
        probs = sorted_logits.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs  # mass of strictly more likely tokens
        sorted_logits = sorted_logits.masked_fill(mass_before >= top_p, float("-inf"))
        scaled = torch.full_like(scaled, float("-inf")).scatter(-1, order, sorted_logits)
    return scaled.log_softmax(dim=-1)


def check_generate_args(prompt_token_ids: list[list[int]], n: int, vocab_size: int) -> None:
    """Validate generate() inputs the same way in every backend."""
    if n < 1:
        raise InvalidInput(f"n must be >= 1, got {n}")
    for i, ids in enumerate(prompt_token_ids):
        if not ids:
            raise InvalidInput(f"prompt {i} is empty; a prompt needs at least one token (e.g. BOS)")
        bad = [t for t in ids if not 0 <= t < vocab_size]
        if bad:
            raise InvalidInput(f"prompt {i} has token ids outside [0, {vocab_size}): {bad[:5]}")


@dataclass(frozen=True)
class TensorMeta:
    shape: tuple[int, ...]
    dtype: torch.dtype


def validate_state(
    state: Mapping[str, torch.Tensor],
    expected: Mapping[str, TensorMeta],
    aliases: Mapping[str, str] | None = None,
) -> None:
    """Check names, shapes and dtypes of a full state against the model's; raise InvalidInput.

    `expected` holds the canonical (deduplicated) weight names, all of which are required.
    `aliases` maps extra accepted names to a canonical one (tied weights such as `lm_head.weight`
    == `model.embed_tokens.weight`): a learner may send either or both. Every problem is reported
    at once so a wrong checkpoint is diagnosed in one try.
    """
    aliases = aliases or {}
    problems: list[str] = []
    covered: set[str] = set()
    for name, tensor in state.items():
        canonical = aliases.get(name, name)
        meta = expected.get(canonical)
        if meta is None:
            problems.append(f"unknown tensor '{name}'")
            continue
        covered.add(canonical)
        if not isinstance(tensor, torch.Tensor):
            problems.append(f"'{name}' is a {type(tensor).__name__}, not a tensor")
        elif tuple(tensor.shape) != meta.shape:
            problems.append(f"'{name}' has shape {tuple(tensor.shape)}, expected {meta.shape}")
        elif tensor.dtype != meta.dtype:
            problems.append(f"'{name}' has dtype {tensor.dtype}, expected {meta.dtype}")
    missing = sorted(set(expected) - covered)
    if missing:
        problems.append(
            f"missing {len(missing)} tensor(s): {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}"
        )
    if problems:
        raise InvalidInput("rejected weights: " + "; ".join(problems[:10]))


# name -> "module:Class"; imported on first use so `vllm` is only imported when that backend is chosen.
BACKENDS: dict[str, str] = {
    "transformers": "services.rollout.backends.transformers_backend:TransformersBackend",
    "vllm": "services.rollout.backends.vllm_backend:VllmBackend",
}


def backend_class(name: str) -> type[GenerationBackend]:
    try:
        target = BACKENDS[name]
    except KeyError:
        raise ConfigError(f"unknown rollout backend '{name}'; choose one of {sorted(BACKENDS)}") from None
    module_name, _, attr = target.partition(":")
    cls = getattr(importlib.import_module(module_name), attr)
    if not (isinstance(cls, type) and issubclass(cls, GenerationBackend)):
        raise ConfigError(f"backend '{name}' ({target}) is not a GenerationBackend")
    return cls


def make_backend(model_cfg: ModelSettings, backend_name: str, cache_dir: Path) -> GenerationBackend:
    """Build the named backend for `model_cfg`; `builtin:tiny` is built under `cache_dir`."""
    cls = backend_class(backend_name)
    factory = getattr(cls, "from_model_config", None)
    if factory is None:
        raise ConfigError(f"backend '{backend_name}' has no from_model_config(model_cfg, cache_dir)")
    backend: GenerationBackend = factory(model_cfg, Path(cache_dir))
    return backend
