"""vLLM generation backend (GPU). The only module in the project that imports vLLM, lazily.

vLLM is an optional extra (`pip install 'rspo[vllm]'`) that cannot be installed on most machines
here, so `import vllm` happens inside `VllmBackend.__init__`, never at module import.

How the contract (see `base`) maps onto vLLM:

* **Logprobs**: the engine is created with `logprobs_mode="processed_logprobs"` (vLLM >= 0.10.2),
  so the sampled token's logprob is taken after temperature and top-p, i.e. from the distribution
  actually sampled from. vLLM's default ("raw_logprobs") would report temperature-1 logprobs and
  silently bias the learner's importance ratios. `SamplingParams(logprobs=0)` returns only the
  sampled token's logprob.
* **n samples, seeds**: each prompt x sample is its own request with `n=1` and seed
  `seed * 1_000_003 + row`, so seeded runs are reproducible without relying on how vLLM derives
  child seeds for `n > 1`; prefix caching still computes each prompt's KV once.
* **Weights**: names, shapes and dtypes are validated against the checkpoint's safetensors headers
  (Hugging Face names, which is what the learner sends) before anything is touched; the tensors then
  go to every worker through `LLM.collective_rpc("rspo_load_weights", ...)`, implemented by
  `_WorkerExtension` (installed with `worker_extension_cls`), which calls the model's own
  `load_weights` (it handles vLLM's fused qkv / gate_up layouts and tied heads). The prefix cache
  is reset afterwards: cached KV computed by the old weights must not be reused.
  Unlike the transformers backend, the copy inside vLLM cannot be rolled back if it fails midway
  (after validation only a device error can cause that); the version is then left unchanged.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from services.common.errors import ConfigError, InvalidInput
from services.common.tiny_model import resolve_dtype, resolve_model_path
from services.rollout.backends.base import (
    FinishReason,
    Generation,
    GenerationBackend,
    ModelSettings,
    SamplingSettings,
    TensorMeta,
    check_generate_args,
    validate_state,
)

_SEED_STRIDE = 1_000_003
_SAFETENSORS_DTYPES = {
    "F32": torch.float32,
    "BF16": torch.bfloat16,
    "F16": torch.float16,
    "F64": torch.float64,
}


def _import_vllm() -> Any:
    try:
        import vllm
    except ImportError as err:
        raise ConfigError(
            f"rollout.backend 'vllm' needs vLLM installed (pip install 'rspo[vllm]' on a CUDA machine): "
            f"{err}; or use rollout.backend 'transformers'"
        ) from None
    return vllm


class _WorkerExtension:
    """Mixed into each vLLM worker (`worker_extension_cls`); called through `collective_rpc`."""

    model_runner: Any
    device: Any

    def rspo_load_weights(self, weights: list[tuple[str, torch.Tensor]]) -> None:
        model = self.model_runner.model
        model.load_weights(weights=((name, t.to(self.device, non_blocking=True)) for name, t in weights))
        if torch.cuda.is_available():
            torch.cuda.synchronize()


def _local_checkpoint_dir(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    # vLLM has already downloaded the checkpoint into the HF cache; only its headers are read.
    return Path(snapshot_download(name_or_path, allow_patterns=["*.safetensors", "*.json"], local_files_only=True))


def checkpoint_meta(name_or_path: str, dtype: torch.dtype) -> tuple[dict[str, TensorMeta], dict[str, str]]:
    """Weight names/shapes from the safetensors headers (served dtype), and the tied-head alias."""
    from safetensors import safe_open

    folder = _local_checkpoint_dir(name_or_path)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ConfigError(f"{folder} holds no *.safetensors files; the vllm backend validates weights against them")
    meta: dict[str, TensorMeta] = {}
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                meta[name] = TensorMeta(tuple(f.get_slice(name).get_shape()), dtype)
    aliases: dict[str, str] = {}
    config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
    if config.get("tie_word_embeddings") and "lm_head.weight" not in meta and "model.embed_tokens.weight" in meta:
        aliases["lm_head.weight"] = "model.embed_tokens.weight"
    return meta, aliases


class VllmBackend(GenerationBackend):
    """A `GenerationBackend` over `vllm.LLM` (see module docstring)."""

    def __init__(
        self,
        model_path: str,
        *,
        dtype: str = "bfloat16",
        trust_remote_code: bool = False,
        seed: int = 0,
        gpu_memory_utilization: float = 0.5,
        max_model_len: int | None = None,
        enforce_eager: bool = False,
    ) -> None:
        vllm = _import_vllm()
        self._vllm = vllm
        self._lock = threading.RLock()
        self._version = 0
        self._served_dtype = resolve_dtype(dtype)
        self._model_path = model_path
        self._llm = vllm.LLM(
            model=model_path,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            seed=seed,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            enforce_eager=enforce_eager,
            enable_prefix_caching=True,
            logprobs_mode="processed_logprobs",
            worker_extension_cls=f"{__name__}._WorkerExtension",
        )
        self._tokenizer = self._llm.get_tokenizer()
        self._meta, self._aliases = checkpoint_meta(model_path, self._served_dtype)
        self._eos = self._collect_eos_ids(model_path, trust_remote_code)
        self._vocab_size = int(self._llm.llm_engine.model_config.get_vocab_size())
        self._last_state: Mapping[str, torch.Tensor] | None = None

    @classmethod
    def from_model_config(cls, cfg: ModelSettings, cache_dir: Path) -> VllmBackend:
        if cfg.device == "cpu":
            raise ConfigError(
                "rollout.backend 'vllm' needs a CUDA GPU; set model.device to 'auto'/'cuda' or use 'transformers'"
            )
        return cls(
            resolve_model_path(cfg.name_or_path, cache_dir),
            dtype=cfg.dtype,
            trust_remote_code=cfg.trust_remote_code,
        )

    def _collect_eos_ids(self, model_path: str, trust_remote_code: bool) -> frozenset[int]:
        ids: set[int] = set()
        if self._tokenizer.eos_token_id is not None:
            ids.add(int(self._tokenizer.eos_token_id))
        try:
            from transformers import GenerationConfig

            eos = GenerationConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code).eos_token_id
        except (OSError, ValueError):
            eos = None
        if isinstance(eos, int):
            ids.add(eos)
        elif isinstance(eos, (list, tuple)):
            ids.update(int(x) for x in eos)
        return frozenset(ids)

    @property
    def eos_token_ids(self) -> frozenset[int]:
        return self._eos

    @property
    def policy_version(self) -> int:
        return self._version

    def encode(self, text: str) -> list[int]:
        return list(self._tokenizer(text, add_special_tokens=True)["input_ids"])

    def decode(self, token_ids: list[int]) -> str:
        return str(self._tokenizer.decode(token_ids, skip_special_tokens=True))

    def generate(self, prompt_token_ids: list[list[int]], n: int, settings: SamplingSettings) -> list[list[Generation]]:
        check_generate_args(prompt_token_ids, n, self._vocab_size)
        if not prompt_token_ids:
            return []
        from vllm.inputs import TokensPrompt

        prompts = []
        params = []
        for i, ids in enumerate(prompt_token_ids):
            for j in range(n):
                row = i * n + j
                prompts.append(TokensPrompt(prompt_token_ids=list(ids)))
                params.append(
                    self._vllm.SamplingParams(
                        n=1,
                        temperature=settings.temperature,
                        top_p=settings.top_p,
                        max_tokens=settings.max_new_tokens,
                        seed=None if settings.seed is None else settings.seed * _SEED_STRIDE + row,
                        logprobs=0,
                        stop_token_ids=sorted(self._eos),
                        skip_special_tokens=True,
                    )
                )
        with self._lock:
            outputs = self._llm.generate(prompts, params, use_tqdm=False)
        results: list[list[Generation]] = []
        for i in range(len(prompt_token_ids)):
            group = []
            for out in outputs[i * n : (i + 1) * n]:
                completion = out.outputs[0]
                ids = list(completion.token_ids)
                if completion.logprobs is None or len(completion.logprobs) != len(ids):
                    raise InvalidInput("vLLM returned no per-token logprobs; is logprobs_mode supported?")
                lps = [float(step[tok].logprob) for step, tok in zip(completion.logprobs, ids, strict=True)]
                reason: FinishReason = "stop" if ids and ids[-1] in self._eos else "length"
                group.append(Generation(ids, lps, self.decode(ids), reason))
            results.append(group)
        return results

    def load_state_dict(self, state: Mapping[str, torch.Tensor], version: int) -> None:
        if version < 0:
            raise InvalidInput(f"policy version must be >= 0, got {version}")
        validate_state(state, self._meta, self._aliases)
        with self._lock:
            self._llm.collective_rpc("rspo_load_weights", args=(list(state.items()),))
            self._llm.reset_prefix_cache()  # KV cached under the old weights is stale
            self._last_state = state
            self._version = version

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The last loaded state (CPU), or the checkpoint's weights before any load.

        vLLM keeps weights in fused layouts with its own names, so they are not read back from the
        engine; what was loaded is, by construction, what it serves.
        """
        with self._lock:
            if self._last_state is not None:
                return {k: v.detach().to("cpu", copy=True) for k, v in self._last_state.items()}
        from safetensors.torch import load_file

        state: dict[str, torch.Tensor] = {}
        for file in sorted(_local_checkpoint_dir(self._model_path).glob("*.safetensors")):
            state.update({k: v.to(self._served_dtype) for k, v in load_file(str(file)).items()})
        return state
