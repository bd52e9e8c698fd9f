"""Every kustomize overlay renders, validates against the Kubernetes OpenAPI schemas (strict, offline,
several versions) and passes our own checks: probes, resources, non-root security contexts, the
run config parses, grace periods outlast the drain timeouts, network flows, GPU placement, KEDA.
"""

from __future__ import annotations

import copy
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from deploy_helpers import OVERLAYS, render

from services.common.config import RspoConfig, parse_config
from services.common.streams import TASKS_GROUP
from services.k8s import manifests as mf

# Native gRPC probes are GA since 1.27; we support the releases from 1.29 on.
K8S_VERSIONS = ("1.29", "1.32", "1.35")
SERVICES = ("rollout", "reward", "learner")
CONFIG_MOUNT = "/etc/rspo"

Obj = dict[str, Any]


def by_kind(objs: list[Obj], kind: str) -> dict[str, Obj]:
    return {o["metadata"]["name"]: o for o in objs if o["kind"] == kind}


def workloads(objs: list[Obj]) -> list[Obj]:
    return [o for o in objs if o["kind"] in ("Deployment", "StatefulSet")]


def component(obj: Obj) -> str:
    return obj["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]


def run_config(objs: list[Obj]) -> RspoConfig:
    cfg = mf.config_of(objs)
    assert cfg is not None, "no ConfigMap with config.yaml"
    return cfg


def config_data(objs: list[Obj]) -> dict[str, Any]:
    (cm,) = [o for o in objs if o["kind"] == "ConfigMap" and "config.yaml" in (o.get("data") or {})]
    data = yaml.safe_load(cm["data"]["config.yaml"])
    assert isinstance(data, dict)
    return data


def literal_env(container: Obj) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env") or [] if "value" in e}


def same_ns_pod_matches(selector: Obj, labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items())


@pytest.fixture(params=sorted(OVERLAYS))
def overlay(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# ---------------------------------------------------------------------------------------------
# Schema validation


def test_every_object_validates_strictly_against_openapi(overlay: str) -> None:
    """kubernetes-validate bundles the OpenAPI schemas: no cluster needed. KEDA CRDs: see below."""
    checked = 0
    for obj in render(overlay):
        if obj["apiVersion"].startswith("keda.sh/"):
            continue
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as err:
                pytest.fail(f"{overlay}: {obj['kind']}/{obj['metadata']['name']} invalid for k8s {version}: "
                            f"{err.message} at {'/'.join(map(str, err.path))}")  # fmt: skip
            checked += 1
    assert checked >= 15 * len(K8S_VERSIONS)


def test_strict_validation_catches_a_misspelled_field() -> None:
    """Negative control: the validator is not vacuous."""
    deploy = copy.deepcopy(by_kind(render("base"), "Deployment")["reward"])
    container = deploy["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deploy, K8S_VERSIONS[0], strict=True)


def test_launched_runs_validate_too(overlay: str) -> None:
    """What `rspo k8s launch` applies (renamed, relabelled) is still schema-valid."""
    objs = mf.prepare_run(render(overlay), run_id="exp1", namespace="ml")
    for obj in objs:
        if not obj["apiVersion"].startswith("keda.sh/"):
            kubernetes_validate.validate(obj, K8S_VERSIONS[-1], strict=True)
    if overlay == "keda":
        for so in by_kind(objs, "ScaledObject").values():
            jsonschema.validate(so, SCALED_OBJECT_SCHEMA)


# ---------------------------------------------------------------------------------------------
# Our own checks on every overlay


def test_namespace_agnostic_and_labelled(overlay: str) -> None:
    for obj in render(overlay):
        assert "namespace" not in obj["metadata"], f"{obj['kind']}/{obj['metadata']['name']} pins a namespace"
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "rspo"


def test_every_container_has_probes_resources_and_non_root_context(overlay: str) -> None:
    for w in workloads(render(overlay)):
        pod = w["spec"]["template"]["spec"]
        where = f"{overlay}: {w['kind']}/{w['metadata']['name']}"
        psc = pod.get("securityContext") or {}
        assert pod.get("automountServiceAccountToken") is False, where
        for c in pod["containers"]:
            csc = c.get("securityContext") or {}
            assert c.get("readinessProbe") and c.get("livenessProbe"), f"{where}/{c['name']}: probes"
            res = c.get("resources") or {}
            for part in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(res.get(part) or {}), f"{where}/{c['name']}: resources.{part}"
            assert csc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True, where
            assert int(csc.get("runAsUser", psc.get("runAsUser", 0))) > 0, where
            assert csc.get("allowPrivilegeEscalation") is False, where
            assert "ALL" in (csc.get("capabilities") or {}).get("drop", []), where
            if csc.get("readOnlyRootFilesystem"):
                mounts = {m["mountPath"] for m in c.get("volumeMounts") or []}
                assert "/tmp" in mounts, f"{where}: read-only root needs a writable /tmp"


def test_config_map_config_parses_with_each_containers_environment(overlay: str) -> None:
    objs = render(overlay)
    data = config_data(objs)
    cfg = parse_config(data, f"{overlay} ConfigMap", env={})
    for w in workloads(objs):
        for c in w["spec"]["template"]["spec"]["containers"]:
            env = {k: v for k, v in literal_env(c).items() if k.startswith("RSPO__")}
            parse_config(data, f"{overlay} {c['name']} env", env=env)
    for section in SERVICES:
        assert getattr(cfg, section).host == "0.0.0.0", f"{section} must listen on all interfaces in a pod"
    assert cfg.telemetry.metrics_port is not None


def test_services_run_the_entry_points_on_the_config_ports(overlay: str) -> None:
    objs = render(overlay)
    cfg = run_config(objs)
    deploys = by_kind(objs, "Deployment")
    config_maps = {n for n, o in by_kind(objs, "ConfigMap").items() if "config.yaml" in (o.get("data") or {})}
    for name in SERVICES:
        pod = deploys[name]["spec"]["template"]["spec"]
        (c,) = pod["containers"]
        assert c["args"][:4] == ["serve", name, "--config", f"{CONFIG_MOUNT}/config.yaml"], c["args"]
        port = getattr(cfg, name).port
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert ports == {"grpc": port, "metrics": cfg.telemetry.metrics_port}
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            assert c[probe]["grpc"]["port"] == port, f"{name}.{probe} must use the native gRPC health probe"
        (mount,) = [m for m in c["volumeMounts"] if m["mountPath"] == CONFIG_MOUNT]
        (vol,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
        assert vol["configMap"]["name"] in config_maps
        annotations = deploys[name]["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert int(annotations["prometheus.io/port"]) == cfg.telemetry.metrics_port
        # Longer than the drain time, so a stopping pod finishes in-flight work.
        assert pod["terminationGracePeriodSeconds"] > getattr(cfg, name).drain_timeout_s
    assert "--run-dir" in deploys["learner"]["spec"]["template"]["spec"]["containers"][0]["args"]


def test_services_route_to_the_right_pods_and_ports(overlay: str) -> None:
    objs = render(overlay)
    cfg = run_config(objs)
    services = by_kind(objs, "Service")
    templates = {component(w): w["spec"]["template"]["metadata"]["labels"] for w in workloads(objs)}
    for name, svc in services.items():
        matched = [
            comp
            for comp, labels in templates.items()
            if same_ns_pod_matches({"matchLabels": svc["spec"]["selector"]}, labels)
        ]
        assert matched == [name], f"Service {name} selects {matched}"
    for name in SERVICES:
        assert {p["port"] for p in services[name]["spec"]["ports"]} == {
            getattr(cfg, name).port,
            cfg.telemetry.metrics_port,
        }
    # The rollout's addresses (env overrides and config file) point at Services on the right ports.
    rollout = by_kind(objs, "Deployment")["rollout"]["spec"]["template"]["spec"]["containers"][0]
    env = literal_env(rollout)
    for key, target in (("RSPO__ROLLOUT__REWARD_ADDRESS", "reward"), ("RSPO__ROLLOUT__LEARNER_ADDRESS", "learner")):
        host, _, port = env[key].partition(":")
        assert host == target and int(port) == getattr(cfg, target).port
        assert getattr(cfg.rollout, key.split("__")[-1].lower()) == env[key]


def test_replicas_strategy_volumes_and_disruption_budget(overlay: str) -> None:
    objs = render(overlay)
    deploys = by_kind(objs, "Deployment")
    learner = deploys["learner"]["spec"]
    assert learner["replicas"] == 1 and learner["strategy"]["type"] == "Recreate"
    pvcs = by_kind(objs, "PersistentVolumeClaim")
    claims = [
        v["persistentVolumeClaim"]["claimName"]
        for v in learner["template"]["spec"]["volumes"]
        if "persistentVolumeClaim" in v
    ]
    assert claims and all(c in pvcs for c in claims), "learner checkpoints need a PVC"
    if overlay != "keda":  # under KEDA the HPA owns replicas (see test_keda_scaled_objects)
        assert deploys["reward"]["spec"]["replicas"] >= 2
    (pdb,) = by_kind(objs, "PodDisruptionBudget").values()
    reward_labels = deploys["reward"]["spec"]["template"]["metadata"]["labels"]
    assert same_ns_pod_matches(pdb["spec"]["selector"], reward_labels)
    assert pdb["spec"]["minAvailable"] >= 1


def test_redis_statefulset_persists_with_append_only(overlay: str) -> None:
    objs = render(overlay)
    sts = by_kind(objs, "StatefulSet")
    if overlay == "managed-redis":
        assert not sts and "redis" not in by_kind(objs, "Service")
        return
    redis = sts["redis"]["spec"]
    args = redis["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    (claim,) = redis["volumeClaimTemplates"]
    mounts = {m["name"]: m["mountPath"] for m in redis["template"]["spec"]["containers"][0]["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == "/data"
    assert redis["serviceName"] in by_kind(objs, "Service")


def test_network_policies_allow_only_the_data_flow(overlay: str) -> None:
    """Default deny, then exactly rollout->reward, rollout->learner, services->redis, Prometheus->metrics."""
    objs = render(overlay)
    cfg = run_config(objs)
    templates = {component(w): w["spec"]["template"]["metadata"]["labels"] for w in workloads(objs)}
    policies = list(by_kind(objs, "NetworkPolicy").values())
    assert any(not p["spec"].get("ingress") and "Ingress" in p["spec"]["policyTypes"] for p in policies), "default deny"
    edges: set[tuple[str, str, int]] = set()
    external: set[tuple[str, str, int]] = set()
    for p in policies:
        targets = [c for c, labels in templates.items() if same_ns_pod_matches(p["spec"]["podSelector"], labels)]
        for rule in p["spec"].get("ingress") or []:
            ports = [int(pt["port"]) for pt in rule["ports"]]
            for peer in rule["from"]:
                if "namespaceSelector" in peer:
                    who = (peer.get("podSelector") or {}).get("matchLabels", {}).get("app.kubernetes.io/name") or str(
                        peer["namespaceSelector"].get("matchLabels")
                    )
                    external |= {(who, t, port) for t in targets for port in ports}
                    continue
                sources = [c for c, labels in templates.items() if same_ns_pod_matches(peer["podSelector"], labels)]
                edges |= {(s, t, port) for s in sources for t in targets for port in ports}
    expected = {("rollout", "reward", cfg.reward.port), ("rollout", "learner", cfg.learner.port)}
    if overlay != "managed-redis":
        expected |= {(s, "redis", 6379) for s in SERVICES}
    assert edges == expected
    assert {(w, t, p) for w, t, p in external if w == "prometheus"} == {
        ("prometheus", t, cfg.telemetry.metrics_port) for t in templates
    }


def test_gpu_overlay_puts_gpus_on_rollout_and_learner_only() -> None:
    objs = render("gpu")
    cfg = run_config(objs)
    assert (cfg.model.dtype, cfg.model.device, cfg.rollout.backend) == ("bfloat16", "cuda", "vllm")
    for w in workloads(objs):
        pod = w["spec"]["template"]["spec"]
        (c,) = pod["containers"]
        gpus = {part: (c["resources"].get(part) or {}).get("nvidia.com/gpu") for part in ("requests", "limits")}
        if component(w) in ("rollout", "learner"):
            assert gpus["limits"] == "1", w["metadata"]["name"]
            assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
            assert c["image"].endswith("-gpu")
        else:
            assert gpus == {"requests": None, "limits": None}, w["metadata"]["name"]
            assert "nodeSelector" not in pod and "tolerations" not in pod
            assert not c["image"].endswith("-gpu")
    reward_affinity = by_kind(objs, "Deployment")["reward"]["spec"]["template"]["spec"]["affinity"]["nodeAffinity"]
    term = reward_affinity["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]
    assert {"key": "nvidia.com/gpu.present", "operator": "DoesNotExist"} in term["matchExpressions"]
    for other in ("base", "cpu-smoke"):
        assert "nvidia.com/gpu" not in yaml.safe_dump_all(render(other))


def test_managed_redis_overlay_reads_the_url_from_a_secret() -> None:
    objs = render("managed-redis")
    secrets = by_kind(objs, "Secret")
    for name in SERVICES:
        (c,) = by_kind(objs, "Deployment")[name]["spec"]["template"]["spec"]["containers"]
        (url,) = [e for e in c["env"] if e["name"] == "RSPO__REDIS__URL"]
        ref = url["valueFrom"]["secretKeyRef"]
        assert ref["name"] in secrets and ref["key"] in secrets[ref["name"]]["data"]
    assert "redis" not in {component(w) for w in workloads(objs)}


def test_cpu_smoke_is_small() -> None:
    objs = render("cpu-smoke")
    cfg = run_config(objs)
    assert cfg.model.name_or_path == "builtin:tiny" and cfg.model.device == "cpu"
    for w in workloads(objs):
        limits = w["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert limits["memory"].endswith(("Mi", "Gi")) and (
            limits["memory"].endswith("Mi") or int(limits["memory"][:-2]) <= 2
        )


# ---------------------------------------------------------------------------------------------
# KEDA (a CRD: kubernetes-validate has no schema, so we check against the fields KEDA 2.12+ defines)

_STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
SCALED_OBJECT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "required": ["scaleTargetRef", "triggers"],
            "additionalProperties": False,
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "required": ["name"],
                    "additionalProperties": False,
                    "properties": {
                        "name": {"type": "string"},
                        "kind": {"type": "string"},
                        "apiVersion": {"type": "string"},
                        "envSourceContainerName": {"type": "string"},
                    },
                },
                "pollingInterval": {"type": "integer", "minimum": 1},
                "cooldownPeriod": {"type": "integer", "minimum": 0},
                "idleReplicaCount": {"type": "integer", "minimum": 0},
                "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "fallback": {"type": "object"},
                "advanced": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "restoreToOriginalReplicaCount": {"type": "boolean"},
                        "horizontalPodAutoscalerConfig": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {"name": {"type": "string"}, "behavior": {"type": "object"}},
                        },
                        "scalingModifiers": {"type": "object"},
                    },
                },
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["type", "metadata"],
                        "additionalProperties": False,
                        "properties": {
                            "type": {"type": "string"},
                            "name": {"type": "string"},
                            "metadata": _STR_MAP,
                            "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                            "useCachedMetrics": {"type": "boolean"},
                            "authenticationRef": {"type": "object", "required": ["name"]},
                        },
                    },
                },
            },
        },
    },
}
# Metadata keys of the KEDA redis-streams scaler (https://keda.sh/docs/latest/scalers/redis-streams/).
REDIS_STREAMS_KEYS = {
    "address", "addresses", "host", "hosts", "port", "ports", "addressFromEnv", "hostFromEnv", "portFromEnv",
    "username", "usernameFromEnv", "password", "passwordFromEnv", "databaseIndex", "enableTLS", "unsafeSsl",
    "stream", "consumerGroup", "pendingEntriesCount", "streamLength", "lagCount", "activationLagCount",
    "sentinelMaster", "sentinelMasterFromEnv", "sentinelUsername", "sentinelPassword",
}  # fmt: skip


def test_keda_scaled_objects() -> None:
    objs = render("keda")
    cfg = run_config(objs)
    deploys = by_kind(objs, "Deployment")
    scaled = by_kind(objs, "ScaledObject")
    assert set(scaled) == {"rollout", "reward"}
    stream = f"{cfg.redis.key_prefix}:{cfg.run.run_id}:tasks"
    for name, so in scaled.items():
        jsonschema.validate(so, SCALED_OBJECT_SCHEMA)
        assert so["spec"]["scaleTargetRef"]["name"] == name and name in deploys
        assert "replicas" not in deploys[name]["spec"], "the HPA owns replicas; the manifest must not fight it"
        (trigger,) = so["spec"]["triggers"]
        meta = trigger["metadata"]
        assert trigger["type"] == "redis-streams" and set(meta) <= REDIS_STREAMS_KEYS
        assert meta["stream"] == stream and meta["consumerGroup"] == TASKS_GROUP
        assert meta["address"].split(".")[0] == "redis" and meta["address"].endswith(":6379")
        assert so["spec"]["minReplicaCount"] <= so["spec"]["maxReplicaCount"]
    assert "lagCount" in scaled["rollout"]["spec"]["triggers"][0]["metadata"]
    assert scaled["reward"]["spec"]["minReplicaCount"] >= 2  # keeps the PDB satisfiable
    # The KEDA operator (namespace keda) may reach Redis.
    redis_np = by_kind(objs, "NetworkPolicy")["redis-from-services"]
    assert any(
        peer.get("namespaceSelector", {}).get("matchLabels") == {"kubernetes.io/metadata.name": "keda"}
        for rule in redis_np["spec"]["ingress"]
        for peer in rule["from"]
    )
