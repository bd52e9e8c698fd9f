"""docker-compose.yml: validated offline by `docker-compose config -q` (Debian's docker-compose 1.29,
`apt-get install -y --no-install-recommends docker-compose`; no Docker engine runs here), and
checked against the code: every service runs an `rspo serve X` command the CLI accepts, on the
port its config section says, with an environment that parses into the run config.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_helpers import REPO

from services.cli import build_parser
from services.common.config import RspoConfig, parse_config

COMPOSE = REPO / "docker-compose.yml"
CONFIG_IN_CONTAINER = "/etc/rspo/config.yaml"
VARIANTS = {
    "rollout": "rollout",
    "reward": "reward",
    "learner": "learner",
    "rollout-gpu": "rollout",
    "learner-gpu": "learner",
}


def docker_compose() -> str:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.fail(
            "docker-compose is not on PATH: install it with "
            "`apt-get install -y --no-install-recommends docker-compose` (validates offline, no engine needed)"
        )
    return exe


def compose() -> dict[str, Any]:
    """The file as written."""
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


@functools.lru_cache(maxsize=1)
def resolved() -> dict[str, Any]:
    """The file as docker-compose resolves it (anchors merged, variables interpolated, gpu profile on)."""
    cmd = [docker_compose(), "--project-directory", str(REPO), "-f", str(COMPOSE), "--profile", "gpu", "config"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, check=False)
    assert proc.returncode == 0, proc.stderr
    data = yaml.safe_load(proc.stdout)
    assert isinstance(data, dict)
    return data


def env_of(service: dict[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in (service.get("environment") or {}).items()}


def config_for(service: dict[str, Any]) -> RspoConfig:
    """The run config the service sees: the mounted file plus its RSPO__ environment."""
    (mount,) = [v for v in service["volumes"] if v.split(":")[1] == CONFIG_IN_CONTAINER]
    path = Path(mount.split(":")[0])
    assert path == REPO / "configs" / "quickstart.yaml", "the default stack runs the quickstart config"
    assert path.is_file(), f"{path} (mounted as the run config) does not exist"
    data = yaml.safe_load(path.read_text()) or {}
    env = {k: v for k, v in env_of(service).items() if k.startswith("RSPO__")}
    return parse_config(data, str(path), env=env)


def container_ports(service: dict[str, Any]) -> dict[int, int]:
    """container port -> published host port (resolved long form)."""
    return {int(p["target"]): int(p["published"]) for p in service.get("ports") or []}


@pytest.mark.parametrize("profile", [None, "gpu"])
def test_docker_compose_config_validates(profile: str | None, tmp_path: Path) -> None:
    cmd = [docker_compose(), "--project-directory", str(REPO), "-f", str(COMPOSE)]
    if profile:
        cmd += ["--profile", profile]
    proc = subprocess.run([*cmd, "config", "-q"], capture_output=True, text=True, cwd=tmp_path, check=False)
    assert proc.returncode == 0, f"docker-compose config rejected {COMPOSE}:\n{proc.stderr}"


def test_compose_file_avoids_keys_old_compose_rejects() -> None:
    data = compose()
    assert "name" not in data and "version" not in data
    for name, svc in data["services"].items():
        assert "gpus" not in svc, f"{name}: use deploy.resources.reservations.devices"


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_service_command_config_and_ports_match_the_code(name: str) -> None:
    data = resolved()
    svc = data["services"][name]
    section = VARIANTS[name]
    args = build_parser().parse_args(svc["command"])  # the real `rspo` CLI accepts the command
    assert (args.command, args.service, str(args.config)) == ("serve", section, CONFIG_IN_CONTAINER)
    cfg = config_for(svc)
    sec = getattr(cfg, section)
    assert sec.host == "0.0.0.0", f"{name} must listen on all interfaces in a container"
    ports = container_ports(svc)
    assert sec.port in ports, f"{name}: config port {sec.port} not published ({ports})"
    assert cfg.telemetry.metrics_port in ports, f"{name}: Prometheus port not published"
    health = svc["healthcheck"]["test"]
    assert health[:4] == ["CMD", "python", "-m", "services.common.healthcheck"]
    assert health[4] == f"127.0.0.1:{sec.port}"
    assert env_of(svc)["RSPO_HEALTH_ADDRESS"] == f"127.0.0.1:{sec.port}"
    redis_host = (cfg.redis.url or "").split("://")[1].split(":")[0]
    assert redis_host == "redis" and svc["depends_on"]["redis"] == {"condition": "service_healthy"}
    if section == "learner":
        assert args.run_dir == Path("/data/run")
        assert any(v.split(":")[1] == "/data" for v in svc["volumes"]), "learner needs the run-data volume"
    if section == "rollout":
        for attr in ("reward_address", "learner_address"):
            host, _, port = getattr(cfg.rollout, attr).partition(":")
            target = data["services"][host]  # a compose service name
            target_section = VARIANTS.get(host, host)
            assert int(port) == getattr(config_for(target), target_section).port
            assert svc["depends_on"][host] == {"condition": "service_healthy"}
    if name.endswith("-gpu"):
        assert svc["profiles"] == ["gpu"]
        (device,) = svc["deploy"]["resources"]["reservations"]["devices"]
        assert device["capabilities"] == ["gpu"] and device["driver"] == "nvidia"
        assert svc["image"].endswith("-gpu") and svc["build"]["dockerfile"] == "docker/Dockerfile.gpu"
        assert device["device_ids"] == ["0"]  # default when RSPO_*_GPU is unset
        assert (cfg.model.device, cfg.model.dtype) == ("cuda", "bfloat16")
    else:
        assert "profiles" not in svc, "the default `docker compose up` must start the CPU stack"
        assert svc["build"]["dockerfile"] == "docker/Dockerfile"


def test_published_host_ports_do_not_collide_within_a_profile() -> None:
    services = resolved()["services"]
    for profile in (None, "gpu"):
        chosen = ["redis", "reward"] + (["learner-gpu", "rollout-gpu"] if profile else ["learner", "rollout"])
        host_ports = [hp for n in chosen for hp in container_ports(services[n]).values()]
        assert len(host_ports) == len(set(host_ports)), host_ports


def test_redis_persists_and_start_order_waits_for_health() -> None:
    data = compose()
    redis = data["services"]["redis"]
    cmd = redis["command"]
    assert cmd[cmd.index("--appendonly") + 1] == "yes"
    assert cmd[cmd.index("--maxmemory-policy") + 1] == "noeviction"
    assert "redis-data:/data" in redis["volumes"] and "redis-data" in data["volumes"]
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    assert "run-data" in data["volumes"]


def test_dockerfiles_layering_user_entrypoint_healthcheck() -> None:
    for name, extra in (("Dockerfile", None), ("Dockerfile.gpu", "vllm")):
        text = (REPO / "docker" / name).read_text()
        lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
        first_source = next(i for i, line in enumerate(lines) if line.startswith("COPY services"))
        deps = next(i for i, line in enumerate(lines) if "pip install -r /tmp/requirements.txt" in line)
        assert deps < first_source, f"{name}: dependencies must be installed before the source is copied"
        assert any(line.startswith("COPY pyproject.toml ./") for line in lines[:deps])
        assert any(line.startswith("USER ") and "root" not in line for line in lines), f"{name}: non-root USER"
        assert lines[-2] == 'ENTRYPOINT ["rspo"]' or 'ENTRYPOINT ["rspo"]' in lines
        assert any("services.common.healthcheck" in line for line in lines if "CMD" in line)
        if extra:
            assert "['vllm']" in text and ".[vllm]" in text
        else:
            torch = next(i for i, line in enumerate(lines) if "download.pytorch.org/whl/cpu" in line)
            torch_install = next(i for i, line in enumerate(lines) if '"torch==${TORCH_VERSION}"' in line)
            assert torch < torch_install < deps, "torch CPU wheel must be installed before the other dependencies"
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".git", ".venv", "runs", "tests"} <= set(ignored)
    assert "configs" not in ignored and "services" not in ignored
