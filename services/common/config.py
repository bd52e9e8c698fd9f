"""Typed run configuration: one YAML file for the whole run, one section per service.

Every service (`rspo serve rollout|reward|learner`) and `rspo train` load the same
file, so a docker-compose file or a Kubernetes ConfigMap ships one document.
Values are validated at load; a wrong value raises `ConfigError` whose message
names the field, what is wrong and how to fix it. Environment variables
override the file: `RSPO__LEARNER__LR=1e-4` sets `learner.lr` (double
underscore separates the path; values are parsed as YAML scalars).

Units are in the field names (`timeout_s`, `block_ms`, `max_message_bytes`).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from services.common.errors import ConfigError

ENV_PREFIX = "RSPO__"


class _Section(BaseModel):
    # extra="forbid": a misspelled key is an error, not a silently ignored setting.
    model_config = ConfigDict(extra="forbid", frozen=True)


class RunConfig(_Section):
    run_id: str = Field("rspo", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$", description="Names keys and group ids.")
    run_dir: str = Field("runs/rspo", description="Checkpoints, metrics JSONL, summary.json.")
    seed: int = 0


class RedisConfig(_Section):
    url: str | None = Field(None, description="redis://host:port/db. None: `rspo train` starts an embedded server.")
    key_prefix: str = "rspo"
    block_ms: int = Field(1000, ge=1, le=60_000, description="XREADGROUP BLOCK time.")
    claim_idle_s: float = Field(30.0, gt=0, description="Pending entries idle this long are reclaimed.")
    max_deliveries: int = Field(3, ge=1, le=100, description="After this many deliveries an entry is dead-lettered.")
    socket_timeout_s: float = Field(30.0, gt=0)

    @model_validator(mode="after")
    def _socket_outlives_block(self) -> RedisConfig:
        if self.socket_timeout_s * 1000 <= self.block_ms:
            raise ValueError(
                f"socket_timeout_s ({self.socket_timeout_s}) must exceed block_ms/1000 ({self.block_ms / 1000}): "
                "a blocking XREADGROUP would otherwise time out; raise socket_timeout_s or lower block_ms"
            )
        return self


class ModelConfig(_Section):
    name_or_path: str = Field(
        "builtin:tiny",
        description="Hugging Face hub id or local folder; 'builtin:tiny' builds a tiny Llama + tokenizer in run_dir.",
    )
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: str = Field("auto", description="'auto' (cuda if available, else cpu), 'cpu', 'cuda', 'cuda:1'.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature; the learner scores with the same one.")
    top_p: float = Field(1.0, gt=0, le=1.0)
    max_new_tokens: int = Field(8, ge=1, le=32_768)
    trust_remote_code: bool = False


class TaskConfig(_Section):
    family: str = Field("max_digit", description="Task family name (see `rspo tasks`) or 'jsonl'.")
    data_path: str | None = Field(None, description="JSONL file for family 'jsonl' (fields: prompt, reference, task).")
    eval_path: str | None = None
    num_train: int = Field(4096, ge=1)
    num_eval: int = Field(64, ge=1)
    n: int = Field(16, ge=1, le=4096, description="Samples per prompt (group size).")
    k: int = Field(4, ge=1, description="Pass@k / Max@k target; needs k <= n.")
    options: dict[str, Any] = Field(default_factory=dict, description="Family-specific generator options.")

    @model_validator(mode="after")
    def _k_fits_group(self) -> TaskConfig:
        if self.k > self.n:
            raise ValueError(
                f"k={self.k} exceeds n={self.n}: every unbiased Pass@k estimator needs n >= k samples per "
                f"prompt; raise task.n to at least {self.k} or lower task.k"
            )
        if self.family == "jsonl" and not self.data_path:
            raise ValueError("family 'jsonl' needs task.data_path (a JSONL file with prompt/reference per line)")
        return self


class RetryConfig(_Section):
    max_attempts: int = Field(3, ge=1, le=20)
    initial_backoff_s: float = Field(0.1, ge=0)
    max_backoff_s: float = Field(2.0, ge=0)
    multiplier: float = Field(2.0, ge=1.0)


class RolloutConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(50051, ge=0, le=65535, description="0 picks a free port.")
    replica_id: str = Field("", description="Consumer name in the tasks group; empty = hostname-pid.")
    backend: Literal["transformers", "vllm"] = "transformers"
    reward_address: str = "127.0.0.1:50052"
    learner_address: str = "127.0.0.1:50053"
    reward_timeout_s: float = Field(30.0, gt=0)
    reward_retry: RetryConfig = RetryConfig()
    group_attempts: int = Field(2, ge=1, le=10, description="Whole-group scoring attempts before dropping it.")
    weights_timeout_s: float = Field(120.0, gt=0)
    weights_retry: RetryConfig = RetryConfig(max_attempts=6, initial_backoff_s=0.5, max_backoff_s=5.0)
    tasks_per_read: int = Field(4, ge=1, le=1024, description="Tasks per XREADGROUP; generated as one batch.")
    concurrency: int = Field(2, ge=1, le=64, description="Read loops per replica (overlap scoring with generation).")
    max_message_bytes: int = Field(64 << 20, ge=1 << 16)
    reflection: bool = True
    drain_timeout_s: float = Field(10.0, ge=0)


class ScorerSpec(_Section):
    kind: str = Field(
        ...,
        description="Scorer registry name, e.g. 'task', 'exact', 'math', 'regex', 'code', 'python', 'remote'.",
    )
    weight: float = 1.0
    options: dict[str, Any] = Field(default_factory=dict)


class RewardConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(50052, ge=0, le=65535)
    scorers: list[ScorerSpec] = Field(default_factory=lambda: [ScorerSpec(kind="task")])
    min_reward: float = -1e6
    max_reward: float = 1e6
    max_message_bytes: int = Field(4 << 20, ge=1 << 12)
    max_responses_per_group: int = Field(4096, ge=1)
    max_concurrent_groups: int = Field(64, ge=1)
    score_timeout_s: float = Field(30.0, gt=0)
    reflection: bool = True
    drain_timeout_s: float = Field(10.0, ge=0)

    @model_validator(mode="after")
    def _range(self) -> RewardConfig:
        if self.min_reward >= self.max_reward:
            raise ValueError(f"min_reward ({self.min_reward}) must be below max_reward ({self.max_reward})")
        return self


class LossConfig(_Section):
    mode: Literal["sequence", "token_mean", "token_sum"] = Field(
        "sequence",
        description="'sequence' is exact REINFORCE (unbiased on-policy); the others are token-level.",
    )
    clip_eps: float | None = Field(
        None,
        gt=0,
        description="PPO clip epsilon for the importance ratio; None = no ratio (exact on-policy form).",
    )
    kl_coef: float = Field(0.0, ge=0, description="KL penalty to the initial (reference) policy; 0 = off.")
    advantage_scale: Literal["none", "batch_std"] = Field(
        "none", description="One batch-level scale; never per-prompt std (that turns RSPO back into GRPO)."
    )


class LearnerConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(50053, ge=0, le=65535)
    method: Literal["rspo", "rspo_passk", "pkpo", "pkpo_loo", "passk_training", "grpo", "rloo"] = "rspo"
    total_steps: int = Field(100, ge=1)
    groups_per_step: int = Field(8, ge=1)
    max_staleness: int = Field(
        1, ge=0, description="Admission bound: at most (max_staleness+1)*groups_per_step in flight."
    )
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float | None = Field(1.0, gt=0)
    loss: LossConfig = LossConfig()
    checkpoint_every_steps: int = Field(
        1, ge=1, description="Groups are acknowledged only after the checkpoint that holds them."
    )
    keep_checkpoints: int = Field(2, ge=1)
    max_message_bytes: int = Field(64 << 20, ge=1 << 16)
    weight_chunk_bytes: int = Field(4 << 20, ge=1 << 12)
    reflection: bool = True
    drain_timeout_s: float = Field(10.0, ge=0)


class EvalConfig(_Section):
    n: int = Field(16, ge=1, description="Samples per held-out prompt; >= 4k recommended.")
    ks: list[int] = Field(default_factory=lambda: [1, 2, 4, 8, 16])
    batch_prompts: int = Field(16, ge=1)

    @model_validator(mode="after")
    def _ks_fit(self) -> EvalConfig:
        bad = [k for k in self.ks if k < 1 or k > self.n]
        if bad:
            raise ValueError(f"eval.ks {bad} must lie in [1, eval.n={self.n}]; raise eval.n or drop them")
        return self


class TelemetryConfig(_Section):
    exporter: Literal["none", "console", "otlp", "file"] = "none"
    otlp_endpoint: str = "http://127.0.0.1:4317"
    file_path: str | None = Field(None, description="For exporter 'file': JSONL spans appended here.")
    metrics_port: int | None = Field(None, ge=0, le=65535, description="Prometheus /metrics port; None = off.")
    log_format: Literal["text", "json"] = "text"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    tensorboard: bool = Field(False, description="Learner also writes step metrics to RUN_DIR/tensorboard.")
    trace_sample_ratio: float = Field(
        1.0, ge=0.0, le=1.0, description="Fraction of groups traced; a group's trace is kept or dropped whole."
    )


class RspoConfig(_Section):
    run: RunConfig = RunConfig()
    redis: RedisConfig = RedisConfig()
    model: ModelConfig = ModelConfig()
    task: TaskConfig = TaskConfig()
    rollout: RolloutConfig = RolloutConfig()
    reward: RewardConfig = RewardConfig()
    learner: LearnerConfig = LearnerConfig()
    eval: EvalConfig = EvalConfig()
    telemetry: TelemetryConfig = TelemetryConfig()

    @model_validator(mode="after")
    def _cross_checks(self) -> RspoConfig:
        if self.learner.method == "rspo_passk" and self.task.family in _GRADED_FAMILIES:
            raise ValueError(
                f"learner.method 'rspo_passk' assumes 0/1 rewards but task family '{self.task.family}' is graded; "
                "use method 'rspo' (the Max@k form, exact on any rewards)"
            )
        return self


# Families whose rewards are graded (not 0/1); kept here so config validation needs no task import.
_GRADED_FAMILIES = frozenset({"digit_sort"})


def _apply_env(data: dict[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    for key, raw in env.items():
        if not key.startswith(ENV_PREFIX):
            continue
        path = [p.lower() for p in key[len(ENV_PREFIX) :].split("__") if p]
        if not path:
            continue
        node = data
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{key}: '{part}' is a value, not a section; cannot set '{path[-1]}' inside it")
            node = child
        node[path[-1]] = yaml.safe_load(raw) if raw != "" else None
    return data


def _hint(loc: tuple[Any, ...], model: type[BaseModel]) -> str:
    """For an unknown key, suggest the closest valid field name."""
    cls: Any = model
    for part in loc[:-1]:
        field = cls.model_fields.get(part) if hasattr(cls, "model_fields") else None
        if field is None:
            return ""
        cls = field.annotation
    names = list(getattr(cls, "model_fields", {}))
    close = difflib.get_close_matches(str(loc[-1]), names, n=1)
    return f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(names)}"


def format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid configuration in {source}:"]
    for e in err.errors():
        loc = tuple(e["loc"])
        dotted = ".".join(str(p) for p in loc) or "<root>"
        if e["type"] == "extra_forbidden":
            lines.append(f"  {dotted}: unknown key{_hint(loc, RspoConfig)}")
        else:
            lines.append(f"  {dotted}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def parse_config(data: Mapping[str, Any], source: str = "<dict>", env: Mapping[str, str] | None = None) -> RspoConfig:
    """Validate a config mapping (plus RSPO__ env overrides) into an `RspoConfig`."""
    merged = _apply_env(_deepcopy(dict(data)), os.environ if env is None else env)
    try:
        return RspoConfig.model_validate(merged)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source)) from None


def load_config(path: str | Path | None, env: Mapping[str, str] | None = None) -> RspoConfig:
    """Load a YAML config file (None: defaults), apply env overrides, validate."""
    if path is None:
        return parse_config({}, "<defaults>", env)
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist; pass --config with a path to a YAML file (see configs/)")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{p} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p} must hold a mapping of sections (run, redis, model, ...), not {type(data).__name__}")
    return parse_config(data, str(p), env)


def with_overrides(cfg: RspoConfig, overrides: Mapping[str, Any]) -> RspoConfig:
    """Return cfg with dotted-path overrides applied ({'learner.port': 0}), re-validated."""
    data = cfg.model_dump(mode="json")
    for dotted, value in overrides.items():
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return parse_config(data, "<overrides>", env={})


def _deepcopy(d: dict[str, Any]) -> dict[str, Any]:
    return {k: _deepcopy(v) if isinstance(v, dict) else v for k, v in d.items()}
