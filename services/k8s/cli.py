"""`rspo k8s launch | wait | status | logs | scale | down`: one training run on a Kubernetes cluster.

A run is the set of objects labelled `rspo.dev/run-id=<run-id>` in one namespace (see
`manifests.prepare_run`). Every command after `launch` finds its objects by that label.

Exit status: 0 done; 1 the API refused or a wait timed out (the message says which object and
why); 2 bad input (overlay, manifest, config, run id).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from services.common.errors import ConfigError
from services.k8s import manifests as mf
from services.k8s.api import Kube, KubeError, load_client

EXIT_OK = 0
EXIT_API = 1
EXIT_INPUT = 2
SCALABLE = ("rollout", "reward")


def add_k8s_parser(subparsers: Any) -> None:
    """Register `k8s` and its subcommands on the top-level CLI's subparsers."""
    k8s = subparsers.add_parser(
        "k8s",
        help="launch, inspect, scale and tear down a run on Kubernetes",
        description="Manage one rspo training run on a Kubernetes cluster (objects labelled rspo.dev/run-id).",
    )
    sub = k8s.add_subparsers(dest="k8s_command", metavar="COMMAND", required=True)

    def common(p: argparse.ArgumentParser, *, run_required: bool = True) -> None:
        p.add_argument("-n", "--namespace", help="target namespace (default: the kube context's)")
        p.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG or ~/.kube/config)")
        p.add_argument("--context", help="kubeconfig context")
        if run_required:
            p.add_argument("--run-id", required=True, help="the run's id (printed by launch)")

    p = sub.add_parser("launch", help="render an overlay and server-side apply it as a new run")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--overlay", help="kustomize directory, e.g. k8s/overlays/cpu-smoke")
    src.add_argument("--manifest", help="pre-rendered YAML (e.g. from `kubectl kustomize`)")
    common(p, run_required=False)
    p.add_argument("--run-id", help="run id (lowercase DNS label, <= 24 chars); default rspo-<utc time>")
    p.add_argument(
        "--image",
        action="append",
        default=[],
        metavar="[COMPONENT=]IMAGE",
        help="container image for all rspo containers, or COMPONENT=IMAGE for one (repeatable)",
    )
    p.add_argument("--config", help="run config YAML replacing the overlay's config.yaml (validated first)")
    p.add_argument(
        "--external-secrets",
        action="store_true",
        help="skip the overlay's Secrets; reference secrets created out of band under their base names",
    )
    p.add_argument("--force-conflicts", action="store_true", help="take over fields owned by other managers")
    p.add_argument("--dry-run", action="store_true", help="print the run's objects as YAML; call no API")
    p.add_argument("--wait", action="store_true", help="then wait until every workload is ready")
    p.add_argument("--timeout-s", type=float, default=900.0, help="for --wait")

    p = sub.add_parser("wait", help="wait until the run's workloads and pods are ready")
    common(p)
    p.add_argument("--timeout-s", type=float, default=900.0)
    p.add_argument("--poll-s", type=float, default=5.0)

    p = sub.add_parser("status", help="pods, workloads and (with --redis-url) queue lag and learner step")
    common(p)
    p.add_argument("--redis-url", help="reach the run's Redis, e.g. after `kubectl port-forward svc/RUN-redis 6379`")
    p.add_argument("--key-prefix", default="rspo", help="redis.key_prefix of the run config")
    p.add_argument("--output", choices=("text", "json"), default="text")

    p = sub.add_parser("logs", help="print (or --follow) a component's logs; learner by default")
    common(p)
    p.add_argument("--component", choices=mf.COMPONENTS, default="learner")
    p.add_argument("-f", "--follow", action="store_true")
    p.add_argument("--tail", type=int, default=None, help="only the last N lines")

    p = sub.add_parser("scale", help="set the replica count of rollout or reward")
    p.add_argument("component", choices=SCALABLE)
    p.add_argument("replicas", type=int)
    common(p)

    p = sub.add_parser("down", help="delete the run's objects (volumes kept unless --delete-volumes)")
    common(p)
    p.add_argument("--delete-volumes", action="store_true", help="also delete checkpoint and Redis PVCs")


def run_k8s(args: argparse.Namespace, kube_factory: Callable[..., tuple[Kube, str]] | None = None) -> int:
    """Run one `rspo k8s` subcommand; returns the exit status."""
    command = _COMMANDS[args.k8s_command]
    try:
        return command(args, kube_factory or _connect)
    except (mf.ManifestError, ConfigError) as err:
        print(f"rspo k8s {args.k8s_command}: {err}", file=sys.stderr)
        return EXIT_INPUT
    except KubeError as err:
        print(f"rspo k8s {args.k8s_command}: {err.message}", file=sys.stderr)
        return EXIT_API


def _connect(args: argparse.Namespace) -> tuple[Kube, str]:
    api_client, default_ns = load_client(getattr(args, "kubeconfig", None), getattr(args, "context", None))
    return Kube(api_client), args.namespace or default_ns


Factory = Callable[[argparse.Namespace], tuple[Kube, str]]


# -- launch -----------------------------------------------------------------------------------


def _images(specs: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for spec in specs:
        comp, sep, image = spec.partition("=")
        if sep and comp in mf.COMPONENTS:
            out[comp] = image
        elif sep and "/" not in comp and ":" not in comp:
            raise mf.ManifestError(f"--image {spec}: component must be one of {', '.join(mf.COMPONENTS)}")
        else:
            out["*"] = spec
    return out


def cmd_launch(args: argparse.Namespace, factory: Factory) -> int:
    objects = mf.render_overlay(args.overlay) if args.overlay else mf.load_documents(args.manifest)
    run_id = mf.check_run_id(args.run_id or mf.new_run_id())
    config_text = Path(args.config).read_text() if args.config else None
    if args.dry_run:
        namespace = args.namespace or "default"
    else:
        kube, namespace = factory(args)
    objs = mf.prepare_run(
        objects,
        run_id=run_id,
        namespace=namespace,
        images=_images(args.image),
        config_text=config_text,
        external_secrets=args.external_secrets,
    )
    mf.config_of(objs)  # the shipped config must parse before anything is applied
    if args.dry_run:
        sys.stdout.write(mf.dump_documents(objs))
        return EXIT_OK
    for obj in objs:
        kube.apply(obj, namespace, force=args.force_conflicts)
        print(f"applied {obj['kind']} {namespace}/{obj['metadata']['name']}")
    print(f"launched run {run_id} in namespace {namespace} ({len(objs)} objects)")
    print(f"next: rspo k8s wait -n {namespace} --run-id {run_id}")
    if args.wait:
        return _wait(kube, namespace, run_id, args.timeout_s, 5.0)
    return EXIT_OK


# -- wait / status ----------------------------------------------------------------------------


def workload_ready(obj: dict[str, Any]) -> tuple[bool, int, int]:
    """(ready, ready replicas, wanted replicas) of a Deployment or StatefulSet."""
    spec, st = obj.get("spec") or {}, obj.get("status") or {}
    want = int(spec.get("replicas", 1))
    ready = int(st.get("readyReplicas") or 0)
    updated = int(st.get("updatedReplicas") or 0)
    observed = int(st.get("observedGeneration") or 0) >= int(obj["metadata"].get("generation") or 0)
    return observed and ready >= want and updated >= want, ready, want


def pod_summary(pod: dict[str, Any]) -> dict[str, Any]:
    meta, st = pod.get("metadata") or {}, pod.get("status") or {}
    statuses = st.get("containerStatuses") or []
    reasons = sorted(
        {
            s["state"][k]["reason"]
            for s in statuses
            for k in ("waiting", "terminated")
            if (s.get("state") or {}).get(k, {}).get("reason")
        }
    )
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in st.get("conditions") or [])
    return {
        "name": meta.get("name", "?"),
        "component": (meta.get("labels") or {}).get(mf.COMPONENT_LABEL, "?"),
        "phase": st.get("phase", "Unknown"),
        "ready": ready and not meta.get("deletionTimestamp"),
        "containers_ready": f"{sum(bool(s.get('ready')) for s in statuses)}/{len(statuses)}",
        "restarts": sum(int(s.get("restartCount") or 0) for s in statuses),
        "reason": ",".join(reasons),
    }


def _workloads(kube: Kube, namespace: str, run_id: str) -> list[dict[str, Any]]:
    sel = mf.run_selector(run_id)
    return [o for kind in mf.WORKLOAD_KINDS for o in kube.list_objects(kind, namespace, sel)]


def _wait(kube: Kube, namespace: str, run_id: str, timeout_s: float, poll_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    sel = mf.run_selector(run_id)
    while True:
        workloads = _workloads(kube, namespace, run_id)
        if not workloads:
            raise KubeError(
                f"no Deployments or StatefulSets labelled {sel} in namespace {namespace}; is the run id right?"
            )
        states = {f"{o['kind']}/{o['metadata']['name']}": workload_ready(o) for o in workloads}
        pods = [pod_summary(p) for p in kube.pods(namespace, sel)]
        if all(ok for ok, _, _ in states.values()) and all(p["ready"] for p in pods):
            print(f"run {run_id}: all {len(workloads)} workloads ready ({len(pods)} pods)")
            return EXIT_OK
        if time.monotonic() >= deadline:
            print(f"run {run_id}: not ready after {timeout_s:g} s", file=sys.stderr)
            for name, (ok, ready, want) in sorted(states.items()):
                if not ok:
                    print(f"  {name}: {ready}/{want} ready", file=sys.stderr)
            for p in pods:
                if not p["ready"]:
                    print(f"  pod {p['name']}: {p['phase']} {p['reason']}".rstrip(), file=sys.stderr)
            return EXIT_API
        time.sleep(max(0.0, min(poll_s, deadline - time.monotonic())))


def cmd_wait(args: argparse.Namespace, factory: Factory) -> int:
    run_id = mf.check_run_id(args.run_id)
    kube, namespace = factory(args)
    return _wait(kube, namespace, run_id, args.timeout_s, args.poll_s)


def queue_status(url: str, key_prefix: str, run_id: str) -> dict[str, Any]:
    """Stream lengths, consumer-group pending/lag and the published policy version (= learner steps)."""
    import redis

    from services.common.streams import GROUPS_GROUP, TASKS_GROUP

    r = redis.Redis.from_url(url, socket_timeout=5, decode_responses=True)
    base = f"{key_prefix}:{run_id}"
    out: dict[str, Any] = {}
    try:
        out["learner_step"] = int(r.get(f"{base}:policy") or 0)
        out["admitted"] = int(r.get(f"{base}:admitted") or 0)
        for stream, group in (("tasks", TASKS_GROUP), ("groups", GROUPS_GROUP)):
            key = f"{base}:{stream}"
            info: dict[str, Any] = {"length": int(r.xlen(key)), "pending": 0, "lag": 0}
            if info["length"] or r.exists(key):
                for g in r.xinfo_groups(key):
                    if g.get("name") == group:
                        info["pending"] = int(g.get("pending") or 0)
                        info["lag"] = int(g.get("lag") or 0)
            out[stream] = info
        out["dead"] = int(r.xlen(f"{base}:dead"))
    except redis.RedisError as err:
        raise KubeError(f"cannot read queue state from {url}: {err}") from None
    finally:
        r.close()
    return out


def cmd_status(args: argparse.Namespace, factory: Factory) -> int:
    run_id = mf.check_run_id(args.run_id)
    kube, namespace = factory(args)
    sel = mf.run_selector(run_id)
    workloads = []
    for o in _workloads(kube, namespace, run_id):
        ok, ready, want = workload_ready(o)
        workloads.append({"kind": o["kind"], "name": o["metadata"]["name"], "ready": ready, "replicas": want, "ok": ok})
    pods = [pod_summary(p) for p in kube.pods(namespace, sel)]
    report: dict[str, Any] = {"run_id": run_id, "namespace": namespace, "workloads": workloads, "pods": pods}
    if args.redis_url:
        report["queue"] = queue_status(args.redis_url, args.key_prefix, run_id)
    if args.output == "json":
        print(json.dumps(report, indent=2))
    else:
        _print_status(report)
    if not workloads and not pods:
        print(f"no objects labelled {sel} in namespace {namespace}", file=sys.stderr)
        return EXIT_API
    return EXIT_OK


def _print_status(report: dict[str, Any]) -> None:
    print(f"run {report['run_id']} in namespace {report['namespace']}")
    for w in report["workloads"]:
        print(f"  {w['kind']:<12} {w['name']:<40} {w['ready']}/{w['replicas']} ready")
    print(f"  {'POD':<48} {'COMPONENT':<9} {'PHASE':<9} {'READY':<6} {'RESTARTS':<8} REASON")
    for p in report["pods"]:
        print(
            f"  {p['name']:<48} {p['component']:<9} {p['phase']:<9} {p['containers_ready']:<6} "
            f"{p['restarts']:<8} {p['reason']}"
        )
    q = report.get("queue")
    if q is None:
        print("  queue lag / learner step: pass --redis-url (kubectl port-forward svc/<run>-redis 6379)")
        return
    print(f"  learner step (published policy version): {q['learner_step']}; tasks admitted: {q['admitted']}")
    for stream in ("tasks", "groups"):
        s = q[stream]
        print(f"  stream {stream:<7} length {s['length']:<6} pending {s['pending']:<6} lag {s['lag']}")
    print(f"  dead letters: {q['dead']}")


# -- logs / scale / down ----------------------------------------------------------------------


def cmd_logs(args: argparse.Namespace, factory: Factory) -> int:
    run_id = mf.check_run_id(args.run_id)
    kube, namespace = factory(args)
    pods = kube.pods(namespace, mf.run_selector(run_id, args.component))
    if not pods:
        raise KubeError(f"no {args.component} pod for run {run_id} in namespace {namespace}")
    pods.sort(
        key=lambda p: (
            (p.get("status") or {}).get("phase") == "Running",
            (p.get("metadata") or {}).get("creationTimestamp") or "",
        )
    )
    pod = pods[-1]["metadata"]["name"]
    containers = [c.get("name") for c in (pods[-1].get("spec") or {}).get("containers") or []]
    container = args.component if args.component in containers or not containers else str(containers[0])
    for line in kube.log_lines(namespace, pod, container, follow=args.follow, tail_lines=args.tail):
        print(line, flush=True)
    return EXIT_OK


def cmd_scale(args: argparse.Namespace, factory: Factory) -> int:
    run_id = mf.check_run_id(args.run_id)
    if args.replicas < 0:
        raise mf.ManifestError("replicas must be >= 0")
    if args.component == "reward" and args.replicas < 2:
        print(
            "warning: reward below 2 replicas cannot keep its PodDisruptionBudget (minAvailable 1) during drains",
            file=sys.stderr,
        )
    kube, namespace = factory(args)
    name = f"{run_id}-{args.component}"
    scaled = kube.list_objects("ScaledObject", namespace, mf.run_selector(run_id), missing_ok=True)
    if any((o.get("spec") or {}).get("scaleTargetRef", {}).get("name") == name for o in scaled):
        print(f"warning: a KEDA ScaledObject manages {name}; it will override this replica count", file=sys.stderr)
    kube.scale(namespace, name, args.replicas)
    print(f"scaled Deployment {namespace}/{name} to {args.replicas} replicas")
    return EXIT_OK


def cmd_down(args: argparse.Namespace, factory: Factory) -> int:
    run_id = mf.check_run_id(args.run_id)
    kube, namespace = factory(args)
    sel = mf.run_selector(run_id)
    deleted = 0
    for info in sorted(mf.KINDS.values(), key=lambda k: -k.order):
        if info.kind == "PersistentVolumeClaim" and not args.delete_volumes:
            kept = kube.list_objects(info.kind, namespace, sel)
            for o in kept:
                print(f"kept PersistentVolumeClaim {namespace}/{o['metadata']['name']} (--delete-volumes removes it)")
            continue
        custom = info.api_class == "CustomObjectsApi"
        for o in kube.list_objects(info.kind, namespace, sel, missing_ok=custom):
            if kube.delete(info.kind, namespace, o["metadata"]["name"]):
                deleted += 1
                print(f"deleted {info.kind} {namespace}/{o['metadata']['name']}")
    print(f"run {run_id}: deleted {deleted} objects" if deleted else f"run {run_id}: nothing to delete in {namespace}")
    return EXIT_OK


_COMMANDS: dict[str, Callable[[argparse.Namespace, Factory], int]] = {
    "launch": cmd_launch,
    "wait": cmd_wait,
    "status": cmd_status,
    "logs": cmd_logs,
    "scale": cmd_scale,
    "down": cmd_down,
}
