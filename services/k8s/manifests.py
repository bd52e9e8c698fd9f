"""Rendering an overlay and turning its objects into one run's objects (pure functions, no API calls).

`render_overlay` runs `kubectl kustomize` (kustomize is built into kubectl; nothing is applied);
`load_documents` reads pre-rendered YAML. `prepare_run` then makes a run out of the objects:

- every name gets the prefix `<run-id>-`, every object the label `rspo.dev/run-id: <run-id>`
  and the target namespace;
- selectors (Deployment/StatefulSet, Service, PodDisruptionBudget, same-namespace NetworkPolicy
  peers, pod anti-affinity) also select on the run label, so two runs in one namespace never
  route to each other's pods;
- references follow the renames (ConfigMap/Secret/PVC volumes and env refs, StatefulSet
  serviceName, KEDA scaleTargetRef/authenticationRef), and so do addresses in environment
  values and KEDA trigger metadata (`redis://redis:6379/0` -> `redis://<run>-redis:6379/0`,
  `redis.<ns>.svc.cluster.local:6379` -> `<run>-redis.<namespace>.svc.cluster.local:6379`);
- every rspo container gets `RSPO__RUN__RUN_ID=<run-id>`, so Redis keys are per run, and KEDA
  stream names `<prefix>:<old run id>:...` are rewritten to match.

What this module does not know: which objects exist in the cluster (see `api.py`).
"""

from __future__ import annotations

import copy
import datetime as dt
import re
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from services.common.config import RspoConfig, parse_config

RUN_LABEL = "rspo.dev/run-id"
COMPONENT_LABEL = "app.kubernetes.io/component"
CONFIG_KEY = "config.yaml"
RUN_ID_ENV = "RSPO__RUN__RUN_ID"
# A DNS label short enough that "<run-id>-learner-checkpoints" and pod names stay under 63 chars.
RUN_ID_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,22}[a-z0-9])?$")
COMPONENTS = ("rollout", "reward", "learner", "redis")

Obj = dict[str, Any]


class ManifestError(Exception):
    """The overlay or manifest cannot become a run (bad input, not an API failure)."""


@dataclass(frozen=True)
class KindInfo:
    """How one supported kind is reached through the typed `kubernetes` client."""

    api_version: str
    kind: str
    api_class: str  # kubernetes.client class, or "CustomObjectsApi"
    snake: str  # method suffix: patch_namespaced_<snake>
    plural: str  # for custom objects
    order: int  # apply order; deletion runs in reverse

    @property
    def group_version(self) -> tuple[str, str]:
        group, _, version = self.api_version.rpartition("/")
        return group, version


_KIND_LIST = (
    KindInfo("v1", "ServiceAccount", "CoreV1Api", "service_account", "serviceaccounts", 0),
    KindInfo("v1", "Secret", "CoreV1Api", "secret", "secrets", 1),
    KindInfo("v1", "ConfigMap", "CoreV1Api", "config_map", "configmaps", 2),
    KindInfo("v1", "PersistentVolumeClaim", "CoreV1Api", "persistent_volume_claim", "persistentvolumeclaims", 3),
    KindInfo("v1", "Service", "CoreV1Api", "service", "services", 4),
    KindInfo("apps/v1", "StatefulSet", "AppsV1Api", "stateful_set", "statefulsets", 5),
    KindInfo("apps/v1", "Deployment", "AppsV1Api", "deployment", "deployments", 6),
    KindInfo("policy/v1", "PodDisruptionBudget", "PolicyV1Api", "pod_disruption_budget", "poddisruptionbudgets", 7),
    KindInfo("networking.k8s.io/v1", "NetworkPolicy", "NetworkingV1Api", "network_policy", "networkpolicies", 8),
    KindInfo("keda.sh/v1alpha1", "TriggerAuthentication", "CustomObjectsApi", "", "triggerauthentications", 9),
    KindInfo("keda.sh/v1alpha1", "ScaledObject", "CustomObjectsApi", "", "scaledobjects", 10),
)
KINDS: dict[str, KindInfo] = {k.kind: k for k in _KIND_LIST}
WORKLOAD_KINDS = ("Deployment", "StatefulSet")


def kind_info(obj: Mapping[str, Any]) -> KindInfo:
    kind, api_version = obj.get("kind"), obj.get("apiVersion")
    info = KINDS.get(str(kind))
    if info is None or info.api_version != api_version:
        supported = ", ".join(f"{k.api_version} {k.kind}" for k in _KIND_LIST)
        raise ManifestError(f"unsupported object {api_version} {kind}; rspo k8s handles: {supported}")
    return info


def parse_documents(text: str, source: str = "<manifest>") -> list[Obj]:
    """All non-empty YAML documents (a `kind: List` is flattened)."""
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as err:
        raise ManifestError(f"{source} is not valid YAML: {err}") from None
    out: list[Obj] = []
    for doc in docs:
        if doc is None:
            continue
        if not isinstance(doc, dict) or "kind" not in doc or "metadata" not in doc:
            raise ManifestError(f"{source}: every document must be a Kubernetes object with kind and metadata")
        if doc["kind"] == "List":
            out.extend(item for item in doc.get("items", []) if item)
        else:
            out.append(doc)
    if not out:
        raise ManifestError(f"{source} holds no Kubernetes objects")
    return out


def load_documents(path: str | Path) -> list[Obj]:
    p = Path(path)
    if not p.is_file():
        raise ManifestError(f"manifest {p} does not exist")
    return parse_documents(p.read_text(), str(p))


def render_overlay(directory: str | Path, kubectl: str | None = None) -> list[Obj]:
    """`kubectl kustomize DIRECTORY` (offline; applies nothing) parsed into objects."""
    d = Path(directory)
    if not (d / "kustomization.yaml").is_file() and not (d / "kustomization.yml").is_file():
        raise ManifestError(f"{d} has no kustomization.yaml; pass an overlay such as k8s/overlays/cpu-smoke")
    exe = kubectl or shutil.which("kubectl")
    if exe is None:
        raise ManifestError(
            "kubectl is not on PATH (it renders the overlay with `kubectl kustomize`); install kubectl, "
            "or render elsewhere and pass --manifest FILE"
        )
    proc = subprocess.run([exe, "kustomize", str(d)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ManifestError(f"kubectl kustomize {d} failed:\n{proc.stderr.strip()}")
    return parse_documents(proc.stdout, f"kubectl kustomize {d}")


def new_run_id(now: dt.datetime | None = None) -> str:
    t = now or dt.datetime.now(dt.timezone.utc)
    return "rspo-" + t.strftime("%y%m%d-%H%M%S")


def check_run_id(run_id: str) -> str:
    if not RUN_ID_RE.match(run_id):
        raise ManifestError(
            f"run id {run_id!r} must be lowercase letters, digits and '-', start and end alphanumeric, "
            "at most 24 characters (it prefixes object names and labels)"
        )
    return run_id


def run_selector(run_id: str, component: str | None = None) -> str:
    sel = f"{RUN_LABEL}={run_id}"
    return f"{sel},{COMPONENT_LABEL}={component}" if component else sel


def config_of(objects: Iterable[Obj], env: Mapping[str, str] | None = None) -> RspoConfig | None:
    """Parse the run config held by the (first) ConfigMap with a config.yaml key; None if there is none."""
    for obj in objects:
        if obj.get("kind") == "ConfigMap" and CONFIG_KEY in (obj.get("data") or {}):
            name = obj["metadata"].get("name", "?")
            data = yaml.safe_load(obj["data"][CONFIG_KEY]) or {}
            if not isinstance(data, dict):
                raise ManifestError(f"ConfigMap {name}: {CONFIG_KEY} must be a mapping of sections")
            return parse_config(data, f"ConfigMap {name}/{CONFIG_KEY}", env={} if env is None else env)
    return None


# ----------------------------------------------------------------------------------------------
# prepare_run


def prepare_run(
    objects: Iterable[Obj],
    *,
    run_id: str,
    namespace: str,
    images: Mapping[str, str] | None = None,
    config_text: str | None = None,
    external_secrets: bool = False,
) -> list[Obj]:
    """The objects of run `run_id` in `namespace`, in apply order (see the module docstring).

    images: {"*": image} replaces every rspo container image; {"rollout": image} one component's.
    config_text: replaces config.yaml in the run-config ConfigMap (validated first).
    external_secrets: Secret objects are left out and references to them keep their names
    (create them once in the namespace, out of band).
    """
    check_run_id(run_id)
    objs = [copy.deepcopy(o) for o in objects]
    for o in objs:
        kind_info(o)
    if external_secrets:
        objs = [o for o in objs if o["kind"] != "Secret"]
    if config_text is not None:
        _replace_config(objs, config_text)
    old_cfg = config_of(objs)

    renames: dict[str, dict[str, str]] = {}
    for o in objs:
        name = o["metadata"]["name"]
        renames.setdefault(o["kind"], {})[name] = f"{run_id}-{name}"
    services = renames.get("Service", {})

    for o in objs:
        meta = o["metadata"]
        meta["name"] = renames[o["kind"]][meta["name"]]
        meta["namespace"] = namespace
        _label(meta, run_id)
        kind = o["kind"]
        spec = o.get("spec") or {}
        if kind in WORKLOAD_KINDS:
            spec.setdefault("selector", {}).setdefault("matchLabels", {})[RUN_LABEL] = run_id
            template = spec.setdefault("template", {})
            _label(template.setdefault("metadata", {}), run_id)
            _fix_pod_spec(template.setdefault("spec", {}), run_id, namespace, renames, services, images)
            if kind == "StatefulSet":
                if spec.get("serviceName") in services:
                    spec["serviceName"] = services[spec["serviceName"]]
                for claim in spec.get("volumeClaimTemplates") or []:
                    _label(claim.setdefault("metadata", {}), run_id)
        elif kind == "Service":
            if spec.get("selector"):
                spec["selector"][RUN_LABEL] = run_id
        elif kind == "PodDisruptionBudget":
            spec.setdefault("selector", {}).setdefault("matchLabels", {})[RUN_LABEL] = run_id
        elif kind == "NetworkPolicy":
            _fix_network_policy(spec, run_id)
        elif kind == "ScaledObject":
            _fix_scaled_object(spec, run_id, namespace, renames, services, old_cfg)
    return sorted(objs, key=lambda o: kind_info(o).order)


def _label(meta: dict[str, Any], run_id: str) -> None:
    labels = meta.get("labels") or {}
    labels[RUN_LABEL] = run_id
    meta["labels"] = labels


def _replace_config(objs: list[Obj], config_text: str) -> None:
    try:
        data = yaml.safe_load(config_text) or {}
    except yaml.YAMLError as err:
        raise ManifestError(f"--config is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ManifestError("--config must hold a mapping of sections (run, redis, model, ...)")
    parse_config(data, "--config", env={})  # raises ConfigError naming the bad field
    for o in objs:
        if o["kind"] == "ConfigMap" and CONFIG_KEY in (o.get("data") or {}):
            o["data"][CONFIG_KEY] = config_text
            return
    raise ManifestError(f"--config given but no ConfigMap in the overlay has a {CONFIG_KEY} key")


_ADDRESS_RE = re.compile(
    r"^(?P<scheme>[a-z][a-z0-9+.-]*://(?:[^@/]*@)?)?"
    r"(?P<host>[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)"
    r"(?P<domain>\.[^:/]*)?"
    r"(?P<rest>:\d+.*)$"
)


def rename_address(value: str, services: Mapping[str, str], namespace: str) -> str:
    """Point an address at the renamed Service: `redis://redis:6379/0`, `reward:50052`, FQDNs."""
    m = _ADDRESS_RE.match(value)
    if not m or m["host"] not in services:
        return value
    domain = m["domain"] or ""
    parts = domain.split(".")  # ['', '<ns>', 'svc', ...]
    if domain and not (len(parts) >= 3 and parts[2] == "svc"):
        return value  # e.g. redis.example.com: not an in-cluster Service name
    if domain:
        parts[1] = namespace
        domain = ".".join(parts)
    return f"{m['scheme'] or ''}{services[m['host']]}{domain}{m['rest']}"


def _ref(d: Mapping[str, Any] | None, key: str, table: Mapping[str, str]) -> None:
    if isinstance(d, dict) and d.get(key) in table:
        d[key] = table[d[key]]


def _fix_pod_spec(
    pod: dict[str, Any],
    run_id: str,
    namespace: str,
    renames: Mapping[str, Mapping[str, str]],
    services: Mapping[str, str],
    images: Mapping[str, str] | None,
) -> None:
    cms, secrets = renames.get("ConfigMap", {}), renames.get("Secret", {})
    pvcs, sas = renames.get("PersistentVolumeClaim", {}), renames.get("ServiceAccount", {})
    _ref(pod, "serviceAccountName", sas)
    for vol in pod.get("volumes") or []:
        _ref(vol.get("configMap"), "name", cms)
        _ref(vol.get("secret"), "secretName", secrets)
        _ref(vol.get("persistentVolumeClaim"), "claimName", pvcs)
        for src in (vol.get("projected") or {}).get("sources") or []:
            _ref(src.get("configMap"), "name", cms)
            _ref(src.get("secret"), "name", secrets)
    affinity = (pod.get("affinity") or {}).get("podAntiAffinity") or {}
    for term in affinity.get("preferredDuringSchedulingIgnoredDuringExecution") or []:
        sel = (term.get("podAffinityTerm") or {}).get("labelSelector") or {}
        if sel.get("matchLabels"):
            sel["matchLabels"][RUN_LABEL] = run_id
    for term in affinity.get("requiredDuringSchedulingIgnoredDuringExecution") or []:
        sel = term.get("labelSelector") or {}
        if sel.get("matchLabels"):
            sel["matchLabels"][RUN_LABEL] = run_id
    for c in [*(pod.get("initContainers") or []), *(pod.get("containers") or [])]:
        for src in c.get("envFrom") or []:
            _ref(src.get("configMapRef"), "name", cms)
            _ref(src.get("secretRef"), "name", secrets)
        env = c.get("env") or []
        for e in env:
            ref = e.get("valueFrom") or {}
            _ref(ref.get("configMapKeyRef"), "name", cms)
            _ref(ref.get("secretKeyRef"), "name", secrets)
            if isinstance(e.get("value"), str):
                e["value"] = rename_address(e["value"], services, namespace)
        if any(str(e.get("name", "")).startswith("RSPO__") for e in env):
            env[:] = [e for e in env if e.get("name") != RUN_ID_ENV] + [{"name": RUN_ID_ENV, "value": run_id}]
            c["env"] = env
            if images:
                image = images.get(c.get("name", ""), images.get("*"))
                if image:
                    c["image"] = image


def _fix_network_policy(spec: dict[str, Any], run_id: str) -> None:
    sel = spec.get("podSelector")
    if isinstance(sel, dict):
        sel.setdefault("matchLabels", {})[RUN_LABEL] = run_id
    for rule in [*(spec.get("ingress") or []), *(spec.get("egress") or [])]:
        for peer in [*(rule.get("from") or []), *(rule.get("to") or [])]:
            # Same-namespace pod peers are this run's pods; peers in other namespaces
            # (Prometheus, the KEDA operator) are left as written.
            if "podSelector" in peer and "namespaceSelector" not in peer:
                peer["podSelector"].setdefault("matchLabels", {})[RUN_LABEL] = run_id


def _fix_scaled_object(
    spec: dict[str, Any],
    run_id: str,
    namespace: str,
    renames: Mapping[str, Mapping[str, str]],
    services: Mapping[str, str],
    old_cfg: RspoConfig | None,
) -> None:
    target = spec.get("scaleTargetRef") or {}
    kind = target.get("kind", "Deployment")
    _ref(target, "name", renames.get(kind, {}))
    auths = renames.get("TriggerAuthentication", {})
    for trig in spec.get("triggers") or []:
        _ref(trig.get("authenticationRef"), "name", auths)
        meta = trig.get("metadata") or {}
        for key in ("address", "addresses", "host"):
            if isinstance(meta.get(key), str):
                meta[key] = ",".join(rename_address(a.strip(), services, namespace) for a in meta[key].split(","))
        stream = meta.get("stream")
        if isinstance(stream, str) and old_cfg is not None:
            old = f"{old_cfg.redis.key_prefix}:{old_cfg.run.run_id}:"
            if stream.startswith(old):
                meta["stream"] = f"{old_cfg.redis.key_prefix}:{run_id}:{stream[len(old) :]}"


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings (the run config) as literal blocks, so dry-run output stays readable."""


def _str_representer(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value and not any(line != line.rstrip() for line in value.splitlines()) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _str_representer)


def dump_documents(objects: Iterable[Obj]) -> str:
    return yaml.dump_all(list(objects), Dumper=_BlockDumper, sort_keys=False)
