"""Task families: registry by name. `make_task(cfg)` builds the configured one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from services.common.config import TaskConfig
from services.common.errors import ConfigError
from services.tasks.base import Example, Split, TaskFamily
from services.tasks.jsonl import JsonlTask
from services.tasks.synthetic import digit_sort, max_digit

FAMILIES: dict[str, Callable[..., Any]] = {
    "max_digit": max_digit,
    "digit_sort": digit_sort,
}


def get_family(name: str, **options: Any) -> TaskFamily:
    """The task family `name` (synthetic families only; 'jsonl' needs a file, see make_task)."""
    try:
        factory = FAMILIES[name]
    except KeyError:
        raise ConfigError(f"unknown task family '{name}'; choose one of {sorted(FAMILIES)} or 'jsonl'") from None
    try:
        family: TaskFamily = factory(**options)
        return family
    except TypeError as err:
        raise ConfigError(f"bad task.options for '{name}': {err}") from None


def make_task(cfg: TaskConfig) -> TaskFamily:
    if cfg.family == "jsonl":
        assert cfg.data_path is not None  # enforced by TaskConfig validation
        return JsonlTask(cfg.data_path, cfg.eval_path, graded=bool(cfg.options.get("graded", False)))
    return get_family(cfg.family, **cfg.options)


__all__ = ["FAMILIES", "Example", "Split", "TaskFamily", "get_family", "make_task"]
