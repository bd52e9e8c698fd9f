"""Hugging Face transformers generation backend (CPU or GPU), with a hand-written sampling loop.

Why not `model.generate`: the contract needs the logprob of each sampled token under the exact
distribution it was drawn from (temperature, top-p renormalisation, see `base.sampling_logprobs`),
per-call seeded randomness that does not touch the global RNG, and one prefill per prompt shared
by its n samples. A 40-line loop over the model's forward with a KV cache does all three.

Batching: prompts are left-padded to a common length (attention mask + explicit position ids, so
padding changes nothing but the batch shape), prefilled once, then the KV cache is repeated n times
per prompt (`DynamicCache.batch_repeat_interleave`) and all prompts x n rows decode together. Rows
that have emitted EOS keep feeding a pad token (their outputs are ignored) until every row is done
or `max_new_tokens` is reached. Large requests are split into chunks of at most `max_batch_rows`.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from services.common.errors import InvalidInput
from services.common.tiny_model import load_model_and_tokenizer, resolve_model_path
from services.rollout.backends.base import (
    FinishReason,
    Generation,
    GenerationBackend,
    ModelSettings,
    SamplingSettings,
    TensorMeta,
    check_generate_args,
    sampling_logprobs,
    validate_state,
)


class TransformersBackend(GenerationBackend):
    """A `GenerationBackend` over any `AutoModelForCausalLM` (see module docstring)."""

    def __init__(self, model: Any, tokenizer: Any, *, max_batch_rows: int = 512) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_rows = max(1, max_batch_rows)
        self.device: torch.device = next(model.parameters()).device
        # Held by generate and load_state_dict: a generation never sees half-loaded weights.
        self._lock = threading.RLock()
        self._version = 0
        self._pad_id = self._pick_pad_id()
        self._eos = self._collect_eos_ids()
        self._vocab_size = int(model.get_input_embeddings().num_embeddings)
        self._max_positions: int | None = getattr(model.config, "max_position_embeddings", None)
        self._live, self._meta, self._aliases = self._index_weights()
        # transformers 5.2x renamed the KV-cache argument/field `past_key_values` -> `cache` (the old name
        # still works but warns); the GPU machines run 5.17, so pick whichever this model's forward takes.
        params = inspect.signature(model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"

    @classmethod
    def from_model_config(cls, cfg: ModelSettings, cache_dir: Path) -> TransformersBackend:
        path = resolve_model_path(cfg.name_or_path, cache_dir)
        model, tokenizer = load_model_and_tokenizer(path, cfg.dtype, cfg.device, cfg.trust_remote_code)
        return cls(model, tokenizer)

    # ---- contract --------------------------------------------------------------------------------

    @property
    def eos_token_ids(self) -> frozenset[int]:
        return self._eos

    @property
    def policy_version(self) -> int:
        return self._version

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=True)["input_ids"])

    def decode(self, token_ids: list[int]) -> str:
        return str(self.tokenizer.decode(token_ids, skip_special_tokens=True))

    def generate(self, prompt_token_ids: list[list[int]], n: int, settings: SamplingSettings) -> list[list[Generation]]:
        check_generate_args(prompt_token_ids, n, self._vocab_size)
        if not prompt_token_ids:
            return []
        longest = max(len(p) for p in prompt_token_ids)
        if self._max_positions is not None and longest + settings.max_new_tokens > self._max_positions:
            raise InvalidInput(
                f"prompt of {longest} tokens + max_new_tokens {settings.max_new_tokens} exceeds the model's "
                f"max_position_embeddings {self._max_positions}; shorten the prompt or lower max_new_tokens"
            )
        gen = torch.Generator(device=self.device)
        if settings.seed is None:
            gen.seed()
        else:
            gen.manual_seed(settings.seed)
        per_chunk = max(1, self.max_batch_rows // n)
        results: list[list[Generation]] = []
        with self._lock:
            for start in range(0, len(prompt_token_ids), per_chunk):
                results.extend(self._generate_chunk(prompt_token_ids[start : start + per_chunk], n, settings, gen))
        return results

    def load_state_dict(self, state: Mapping[str, torch.Tensor], version: int) -> None:
        if version < 0:
            raise InvalidInput(f"policy version must be >= 0, got {version}")
        # Validate everything before the first copy: a rejected state leaves weights and version intact.
        validate_state(state, self._meta, self._aliases)
        with self._lock, torch.no_grad():
            for name, tensor in state.items():
                self._live[self._aliases.get(name, name)].copy_(tensor)
            self._version = version

    def state_dict(self) -> dict[str, torch.Tensor]:
        with self._lock:
            return {name: t.detach().to("cpu", copy=True) for name, t in self._live.items()}

    # ---- internals -------------------------------------------------------------------------------

    def _pick_pad_id(self) -> int:
        for candidate in (self.tokenizer.pad_token_id, self.tokenizer.eos_token_id, 0):
            if candidate is not None:
                return int(candidate)
        return 0

    def _collect_eos_ids(self) -> frozenset[int]:
        ids: set[int] = set()
        gen_cfg = getattr(self.model, "generation_config", None)
        for source in (getattr(gen_cfg, "eos_token_id", None), self.tokenizer.eos_token_id):
            if isinstance(source, int):
                ids.add(source)
            elif isinstance(source, (list, tuple)):
                ids.update(int(x) for x in source)
        return frozenset(ids)

    def _index_weights(self) -> tuple[dict[str, torch.Tensor], dict[str, TensorMeta], dict[str, str]]:
        """Canonical weight names (first name per storage) and aliases for tied tensors."""
        live: dict[str, torch.Tensor] = {}
        aliases: dict[str, str] = {}
        by_storage: dict[tuple[int, int], str] = {}
        for name, tensor in self.model.state_dict(keep_vars=True).items():
            key = (int(tensor.untyped_storage().data_ptr()), int(tensor.storage_offset()))
            if key in by_storage:
                aliases[name] = by_storage[key]
                continue
            by_storage[key] = name
            live[name] = tensor.data if isinstance(tensor, torch.nn.Parameter) else tensor
        meta = {name: TensorMeta(tuple(t.shape), t.dtype) for name, t in live.items()}
        return live, meta, aliases

    @torch.inference_mode()
    def _generate_chunk(
        self, prompts: list[list[int]], n: int, settings: SamplingSettings, gen: torch.Generator
    ) -> list[list[Generation]]:
        dev = self.device
        num_prompts, width = len(prompts), max(len(p) for p in prompts)
        input_ids = torch.full((num_prompts, width), self._pad_id, dtype=torch.long)  # (P, L) left-padded
        mask = torch.zeros((num_prompts, width), dtype=torch.long)
        for i, ids in enumerate(prompts):
            input_ids[i, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            mask[i, width - len(ids) :] = 1
        input_ids, mask = input_ids.to(dev), mask.to(dev)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (P, L): real tokens at 0.., independent of padding

        out = self.model(
            input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1
        )
        cache = _output_cache(out)
        logits = out.logits[:, -1, :]  # (P, V)
        if n > 1:  # one prefill per prompt, shared by its n samples
            cache.batch_repeat_interleave(n)
            logits = logits.repeat_interleave(n, dim=0)  # (B, V), B = P*n
            mask = mask.repeat_interleave(n, dim=0)
            positions = positions.repeat_interleave(n, dim=0)
        rows = num_prompts * n
        next_pos = positions[:, -1:] + 1  # (B, 1)
        eos = torch.tensor(sorted(self._eos) or [-1], device=dev)
        steps = settings.max_new_tokens
        tokens = torch.full((rows, steps), self._pad_id, dtype=torch.long, device=dev)  # (B, T)
        logprobs = torch.zeros((rows, steps), dtype=torch.float32, device=dev)  # (B, T)
        lengths = torch.zeros(rows, dtype=torch.long, device=dev)
        finished = torch.zeros(rows, dtype=torch.bool, device=dev)
        stopped = torch.zeros(rows, dtype=torch.bool, device=dev)

        for t in range(steps):
            logp = sampling_logprobs(logits, settings.temperature, settings.top_p)  # (B, V) fp32
            tok = torch.multinomial(logp.exp(), 1, generator=gen).squeeze(-1)  # (B,)
            lp = logp.gather(-1, tok[:, None]).squeeze(-1)
            active = ~finished
            tok = torch.where(active, tok, torch.full_like(tok, self._pad_id))
            tokens[:, t] = tok
            logprobs[:, t] = torch.where(active, lp, torch.zeros_like(lp))
            lengths += active.long()
            hit_eos = active & torch.isin(tok, eos)
            stopped |= hit_eos
            finished |= hit_eos
            if t == steps - 1 or bool(finished.all()):
                break
            mask = torch.cat([mask, torch.ones((rows, 1), dtype=mask.dtype, device=dev)], dim=-1)
            out = self.model(
                input_ids=tok[:, None],
                attention_mask=mask,
                position_ids=next_pos,
                use_cache=True,
                **{self._cache_kw: cache},
            )
            cache = _output_cache(out)
            logits = out.logits[:, -1, :]
            next_pos = next_pos + 1

        tokens_l, logprobs_l = tokens.cpu().tolist(), logprobs.cpu().tolist()
        lengths_l, stopped_l = lengths.cpu().tolist(), stopped.cpu().tolist()
        grouped: list[list[Generation]] = []
        for i in range(num_prompts):
            samples: list[Generation] = []
            for r in range(i * n, (i + 1) * n):
                ids = tokens_l[r][: lengths_l[r]]
                reason: FinishReason = "stop" if stopped_l[r] else "length"
                samples.append(Generation(ids, logprobs_l[r][: lengths_l[r]], self.decode(ids), reason))
            grouped.append(samples)
        return grouped


def _output_cache(out: Any) -> Any:
    """The KV cache of a model output, under its 5.2x name (`cache`) or the older `past_key_values`."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values
