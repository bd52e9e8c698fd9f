"""Config validation: wrong values fail at load with a message that says how to fix them."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.config import ConfigError, load_config, parse_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_parses(path: Path) -> None:
    load_config(path, env={})


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"learner": {"lr_rate": 1}}, "learner.lr_rate: unknown key"),
        ({"learner": {"metod": "rspo"}}, "did you mean 'method'"),
        ({"task": {"n": 4, "k": 8}}, "raise task.n to at least 8"),
        ({"learner": {"method": "ppo"}}, "learner.method"),
        ({"learner": {"method": "rspo_passk"}, "task": {"family": "digit_sort"}}, "use method 'rspo'"),
        ({"redis": {"block_ms": 5000, "socket_timeout_s": 2}}, "raise socket_timeout_s"),
        ({"reward": {"min_reward": 1, "max_reward": 0}}, "must be below max_reward"),
        ({"eval": {"n": 4, "ks": [1, 8]}}, "raise eval.n"),
        ({"task": {"family": "jsonl"}}, "needs task.data_path"),
    ],
)
def test_bad_values_name_the_field_and_the_fix(data: dict, fragment: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ConfigError) as err:
        parse_config(data, "test.yaml", env={})
    assert fragment in str(err.value)
    assert "test.yaml" in str(err.value)


def test_env_overrides_file_values(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("learner:\n  lr: 0.1\n")
    cfg = load_config(path, env={"RSPO__LEARNER__LR": "0.0005", "RSPO__ROLLOUT__REWARD_ADDRESS": "reward:50052"})
    assert cfg.learner.lr == 0.0005 and cfg.rollout.reward_address == "reward:50052"


def test_env_override_is_validated_too() -> None:
    with pytest.raises(ConfigError, match=r"learner\.total_steps"):
        parse_config({}, env={"RSPO__LEARNER__TOTAL_STEPS": "zero"})


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("learner: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping of sections"):
        load_config(listy)
