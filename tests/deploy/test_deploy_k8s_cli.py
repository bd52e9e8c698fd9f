"""`rspo k8s` against a stand-in Kubernetes API server.

No Kubernetes API server can run on these machines (no kind, k3s, kwok, envtest; `kubectl apply
--dry-run=server` needs one too), so these tests point a kubeconfig at `StandInApi`, a local
http.server on 127.0.0.1 (port 0) that records every request. They check the exact objects
applied (server-side apply PATCH, content type application/apply-patch+yaml, fieldManager=rspo),
the label selection used by status/wait/logs/scale/down, and the messages and exit codes when
the API refuses (403, 404, 409, 422). What a real API server would do with the objects is covered
by the offline OpenAPI validation in test_deploy_k8s_manifests.py.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_helpers import OVERLAYS, REPO, StandInApi, render

from services.cli import main
from services.k8s import manifests as mf

NS = "ml"
RUN = "exp1"
APPLY_TYPE = "application/apply-patch+yaml"

COLLECTIONS = {
    "Secret": f"/api/v1/namespaces/{NS}/secrets",
    "ConfigMap": f"/api/v1/namespaces/{NS}/configmaps",
    "PersistentVolumeClaim": f"/api/v1/namespaces/{NS}/persistentvolumeclaims",
    "Service": f"/api/v1/namespaces/{NS}/services",
    "StatefulSet": f"/apis/apps/v1/namespaces/{NS}/statefulsets",
    "Deployment": f"/apis/apps/v1/namespaces/{NS}/deployments",
    "PodDisruptionBudget": f"/apis/policy/v1/namespaces/{NS}/poddisruptionbudgets",
    "NetworkPolicy": f"/apis/networking.k8s.io/v1/namespaces/{NS}/networkpolicies",
    "ScaledObject": f"/apis/keda.sh/v1alpha1/namespaces/{NS}/scaledobjects",
    "Pod": f"/api/v1/namespaces/{NS}/pods",
}


def rspo(kubeconfig: Path, *args: str) -> int:
    return main(["k8s", *args, "--kubeconfig", str(kubeconfig)])


def labelled(kind: str, name: str, run: str, component: str, **extra: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": kind,
        "metadata": {
            "name": name,
            "namespace": NS,
            "labels": {mf.RUN_LABEL: run, mf.COMPONENT_LABEL: component},
            "generation": 1,
            "creationTimestamp": "2026-11-27T00:00:00Z",
        },
        **extra,
    }


def pod(name: str, run: str, component: str, ready: bool, reason: str | None = None) -> dict[str, Any]:
    state = {"waiting": {"reason": reason}} if reason else {"running": {}}
    return labelled(
        "Pod",
        name,
        run,
        component,
        spec={"containers": [{"name": component}]},
        status={
            "phase": "Running" if ready else "Pending",
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            "containerStatuses": [{"name": component, "ready": ready, "restartCount": 0, "state": state}],
        },
    )


def deployment(name: str, run: str, component: str, replicas: int, ready: int) -> dict[str, Any]:
    return labelled(
        "Deployment",
        name,
        run,
        component,
        spec={"replicas": replicas},
        status={"observedGeneration": 1, "readyReplicas": ready, "updatedReplicas": replicas},
    )


def seed_two_runs(api: StandInApi, *, ready: bool = True) -> None:
    """Run exp1 (ours) and exp2 (another run in the same namespace)."""
    for run in (RUN, "exp2"):
        for comp, replicas in (("rollout", 1), ("reward", 2), ("learner", 1)):
            api.add(
                COLLECTIONS["Deployment"], deployment(f"{run}-{comp}", run, comp, replicas, replicas if ready else 0)
            )
            for i in range(replicas):
                api.add(
                    COLLECTIONS["Pod"],
                    pod(f"{run}-{comp}-{i}", run, comp, ready, None if ready else "ImagePullBackOff"),
                )
        api.add(COLLECTIONS["StatefulSet"], deployment(f"{run}-redis", run, "redis", 1, 1) | {"kind": "StatefulSet"})
        api.add(COLLECTIONS["Pod"], pod(f"{run}-redis-0", run, "redis", True))


# ---------------------------------------------------------------------------------------------
# launch


def test_launch_server_side_applies_exactly_the_run_objects(
    standin: StandInApi, kubeconfig: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert rspo(kubeconfig, "launch", "--overlay", str(OVERLAYS["cpu-smoke"]), "--run-id", RUN, "-n", NS) == 0
    expected = mf.prepare_run(render("cpu-smoke"), run_id=RUN, namespace=NS)
    patches = standin.of("PATCH")
    assert len(patches) == len(standin.requests) == len(expected)
    for req, obj in zip(patches, expected, strict=True):
        assert req.headers["content-type"] == APPLY_TYPE
        assert req.query == {"fieldManager": ["rspo"]}  # no force unless asked
        assert req.headers["authorization"] == "Bearer test-token"
        assert req.path == f"{COLLECTIONS[obj['kind']]}/{obj['metadata']['name']}"
        assert req.body == obj  # the exact object, as prepare_run made it
        assert req.body["metadata"]["labels"][mf.RUN_LABEL] == RUN
        assert req.body["metadata"]["namespace"] == NS
    kinds = [r.body["kind"] for r in patches]
    assert kinds.index("ConfigMap") < kinds.index("Deployment") and kinds.index("Secret") < kinds.index("Deployment")
    out = capsys.readouterr().out
    assert f"launched run {RUN} in namespace {NS} ({len(expected)} objects)" in out


def test_launch_run_wiring_is_consistent(standin: StandInApi, kubeconfig: Path) -> None:
    """Names, selectors, references and addresses all point inside the run."""
    assert rspo(kubeconfig, "launch", "--overlay", str(OVERLAYS["base"]), "--run-id", RUN, "-n", NS) == 0
    objs = [r.body for r in standin.of("PATCH")]
    names = {(o["kind"], o["metadata"]["name"]) for o in objs}
    assert all(name.startswith(f"{RUN}-") for _, name in names)
    deploys = {o["metadata"]["name"]: o for o in objs if o["kind"] == "Deployment"}
    rollout = deploys[f"{RUN}-rollout"]["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in rollout["containers"][0]["env"]}
    assert env["RSPO__REDIS__URL"] == f"redis://{RUN}-redis:6379/0"
    assert env["RSPO__ROLLOUT__REWARD_ADDRESS"] == f"{RUN}-reward:50052"
    assert env["RSPO__ROLLOUT__LEARNER_ADDRESS"] == f"{RUN}-learner:50053"
    assert env["RSPO__RUN__RUN_ID"] == RUN  # Redis keys rspo:<run>:... are per run
    for o in objs:
        if o["kind"] in ("Deployment", "StatefulSet"):
            pod_spec = o["spec"]["template"]["spec"]
            assert o["spec"]["selector"]["matchLabels"][mf.RUN_LABEL] == RUN
            for vol in pod_spec.get("volumes", []):
                for key, kind, field in (
                    ("configMap", "ConfigMap", "name"),
                    ("secret", "Secret", "secretName"),
                    ("persistentVolumeClaim", "PersistentVolumeClaim", "claimName"),
                ):
                    if key in vol:
                        assert (kind, vol[key][field]) in names, vol
        if o["kind"] == "Service":
            assert o["spec"]["selector"][mf.RUN_LABEL] == RUN
    learner = deploys[f"{RUN}-learner"]["spec"]["template"]["spec"]
    (claim,) = [v["persistentVolumeClaim"]["claimName"] for v in learner["volumes"] if "persistentVolumeClaim" in v]
    assert claim == f"{RUN}-learner-checkpoints"


def test_launch_keda_rewrites_targets_addresses_and_streams(standin: StandInApi, kubeconfig: Path) -> None:
    assert rspo(kubeconfig, "launch", "--overlay", str(OVERLAYS["keda"]), "--run-id", RUN, "-n", NS) == 0
    scaled = [r for r in standin.of("PATCH") if r.body["kind"] == "ScaledObject"]
    assert {r.path for r in scaled} == {f"{COLLECTIONS['ScaledObject']}/{RUN}-{c}" for c in ("rollout", "reward")}
    for r in scaled:
        meta = r.body["spec"]["triggers"][0]["metadata"]
        assert meta["address"] == f"{RUN}-redis.{NS}.svc.cluster.local:6379"
        assert meta["stream"] == f"rspo:{RUN}:tasks"
        assert r.body["spec"]["scaleTargetRef"]["name"].startswith(f"{RUN}-")
        assert r.headers["content-type"] == APPLY_TYPE and r.query["fieldManager"] == ["rspo"]


def test_launch_from_prerendered_yaml_with_image_config_and_force(
    standin: StandInApi, kubeconfig: Path, tmp_path: Path
) -> None:
    manifest = tmp_path / "rendered.yaml"
    manifest.write_text(yaml.safe_dump_all(render("base")))
    config = tmp_path / "config.yaml"
    config.write_text((OVERLAYS["cpu-smoke"] / "config.yaml").read_text().replace("total_steps: 20", "total_steps: 7"))
    code = rspo(
        kubeconfig, "launch", "--manifest", str(manifest), "--run-id", RUN, "-n", NS,
        "--image", "registry.example/rspo:1.2", "--image", "learner=registry.example/rspo:1.2-gpu",
        "--config", str(config), "--force-conflicts", "--external-secrets",
    )  # fmt: skip
    assert code == 0
    objs = {(r.body["kind"], r.body["metadata"]["name"]): r for r in standin.of("PATCH")}
    assert all(r.query == {"fieldManager": ["rspo"], "force": ["true"]} for r in objs.values())
    assert not [k for k in objs if k[0] == "Secret"], "--external-secrets applies no Secret"
    images = {
        name: o.body["spec"]["template"]["spec"]["containers"][0]["image"]
        for (kind, name), o in objs.items()
        if kind in ("Deployment", "StatefulSet")
    }
    assert images == {
        f"{RUN}-rollout": "registry.example/rspo:1.2",
        f"{RUN}-reward": "registry.example/rspo:1.2",
        f"{RUN}-learner": "registry.example/rspo:1.2-gpu",
        f"{RUN}-redis": "redis:7.2-alpine",
    }
    (cm,) = [o.body for (kind, _), o in objs.items() if kind == "ConfigMap"]
    assert yaml.safe_load(cm["data"]["config.yaml"])["learner"]["total_steps"] == 7
    reward = objs[("Deployment", f"{RUN}-reward")].body["spec"]["template"]["spec"]
    refs = [e["valueFrom"]["secretKeyRef"]["name"] for e in reward["containers"][0]["env"] if "valueFrom" in e]
    assert refs == ["reward-token"]  # the out-of-band secret's own name


def test_launch_dry_run_prints_and_calls_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["k8s", "launch", "--overlay", str(OVERLAYS["gpu"]), "--run-id", RUN, "-n", NS, "--dry-run"])
    assert code == 0
    docs = [d for d in yaml.safe_load_all(capsys.readouterr().out) if d]
    assert docs == mf.prepare_run(render("gpu"), run_id=RUN, namespace=NS)


@pytest.mark.parametrize(
    ("status", "reason", "expect"),
    [
        (403, "Forbidden", ["forbidden: apply Deployment ml/exp1-", "RBAC", "kubectl auth can-i"]),
        (404, "NotFound", ["not found: apply Deployment", "namespace 'ml' exists"]),
        (409, "Conflict", ["conflict: apply Deployment", "--force-conflicts"]),
        (422, "Invalid", ["invalid object: apply Deployment", "spec.replicas: must be >= 0"]),
    ],
)
def test_launch_reports_api_refusals_and_stops(
    standin: StandInApi,
    kubeconfig: Path,
    capsys: pytest.CaptureFixture[str],
    status: int,
    reason: str,
    expect: list[str],
) -> None:
    causes = [{"field": "spec.replicas", "message": "must be >= 0"}] if status == 422 else None
    standin.fail("PATCH", "/deployments/", status, reason, f"denied by stand-in ({reason})", causes)
    assert rspo(kubeconfig, "launch", "--overlay", str(OVERLAYS["base"]), "--run-id", RUN, "-n", NS) == 1
    err = capsys.readouterr().err
    for fragment in expect:
        assert fragment in err, err
    assert f"denied by stand-in ({reason})" in err
    patches = standin.of("PATCH")
    assert patches[-1].path.startswith(COLLECTIONS["Deployment"]), "stops at the first refusal"
    assert not any(r.body["kind"] in ("PodDisruptionBudget", "NetworkPolicy") for r in patches)


def test_launch_keda_without_keda_installed_says_so(
    standin: StandInApi, kubeconfig: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    standin.fail("PATCH", "/scaledobjects/", 404, "NotFound", "the server could not find the requested resource")
    assert rspo(kubeconfig, "launch", "--overlay", str(OVERLAYS["keda"]), "--run-id", RUN, "-n", NS) == 1
    assert "KEDA is installed" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--run-id", "Bad_Run"], "run id 'Bad_Run'"),
        (["--run-id", RUN, "--config", "BADCONFIG"], "learner.total_steps"),
        (["--run-id", RUN, "--image", "bogus=img"], "component must be one of"),
    ],
)
def test_launch_input_errors_exit_2_before_any_call(
    standin: StandInApi,
    kubeconfig: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("learner:\n  total_steps: 0\n")
    args = [str(bad) if a == "BADCONFIG" else a for a in args]
    assert rspo(kubeconfig, "launch", "--overlay", str(OVERLAYS["base"]), "-n", NS, *args) == 2
    assert message in capsys.readouterr().err
    assert standin.requests == []


def test_missing_overlay_and_missing_credentials(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["k8s", "launch", "--overlay", str(tmp_path), "--dry-run"]) == 2
    assert "no kustomization.yaml" in capsys.readouterr().err
    code = main(["k8s", "status", "--run-id", RUN, "--kubeconfig", str(tmp_path / "nope")])
    assert code == 1 and "no usable Kubernetes credentials" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# wait / status / logs


def test_wait_succeeds_when_the_runs_workloads_are_ready(
    standin: StandInApi, kubeconfig: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seed_two_runs(standin)
    assert rspo(kubeconfig, "wait", "--run-id", RUN, "-n", NS, "--timeout-s", "5", "--poll-s", "0.05") == 0
    assert "all 4 workloads ready (5 pods)" in capsys.readouterr().out
    selectors = {r.query["labelSelector"][0] for r in standin.of("GET")}
    assert selectors == {f"{mf.RUN_LABEL}={RUN}"}


def test_wait_times_out_naming_what_is_not_ready(
    standin: StandInApi, kubeconfig: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seed_two_runs(standin, ready=False)
    assert rspo(kubeconfig, "wait", "--run-id", RUN, "-n", NS, "--timeout-s", "0.3", "--poll-s", "0.05") == 1
    err = capsys.readouterr().err
    assert "not ready after 0.3 s" in err and f"Deployment/{RUN}-reward: 0/2 ready" in err
    assert f"pod {RUN}-learner-0: Pending ImagePullBackOff" in err and "exp2" not in err


def test_wait_with_no_objects_fails(standin: StandInApi, kubeconfig: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert rspo(kubeconfig, "wait", "--run-id", "ghost", "-n", NS, "--timeout-s", "1") == 1
    assert "no Deployments or StatefulSets labelled rspo.dev/run-id=ghost" in capsys.readouterr().err


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A throwaway real Redis server on a free port (the redis-server binary is on PATH here)."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail("redis-server is not on PATH: apt-get install -y --no-install-recommends redis-server")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        import redis

        client = redis.Redis(port=port)
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        client.close()
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_status_json_lists_only_the_run_and_reads_queue_lag(
    standin: StandInApi, kubeconfig: Path, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import redis

    seed_two_runs(standin)
    r = redis.Redis.from_url(redis_url)
    tasks, groups = f"rspo:{RUN}:tasks", f"rspo:{RUN}:groups"
    r.xgroup_create(tasks, "rollout", id="0", mkstream=True)
    r.xgroup_create(groups, "learner", id="0", mkstream=True)
    for i in range(5):
        r.xadd(tasks, {"data": f"t{i}"})
    r.xreadgroup("rollout", "c1", {tasks: ">"}, count=2)  # 2 pending, 3 lag
    r.xadd(groups, {"data": "g0"})
    r.set(f"rspo:{RUN}:policy", 12)
    r.close()
    code = rspo(kubeconfig, "status", "--run-id", RUN, "-n", NS, "--redis-url", redis_url, "--output", "json")
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert {p["name"] for p in report["pods"]} == {f"{RUN}-rollout-0", f"{RUN}-reward-0", f"{RUN}-reward-1",
                                                    f"{RUN}-learner-0", f"{RUN}-redis-0"}  # fmt: skip
    assert {w["name"] for w in report["workloads"]} == {f"{RUN}-{c}" for c in ("rollout", "reward", "learner", "redis")}
    q = report["queue"]
    assert q["learner_step"] == 12
    assert q["tasks"] == {"length": 5, "pending": 2, "lag": 3}
    assert q["groups"] == {"length": 1, "pending": 0, "lag": 1}
    assert {r.query["labelSelector"][0] for r in standin.of("GET")} == {f"{mf.RUN_LABEL}={RUN}"}


def test_status_text_and_api_error(standin: StandInApi, kubeconfig: Path, capsys: pytest.CaptureFixture[str]) -> None:
    seed_two_runs(standin)
    assert rspo(kubeconfig, "status", "--run-id", RUN, "-n", NS) == 0
    out = capsys.readouterr().out
    assert f"{RUN}-learner-0" in out and "exp2" not in out and "pass --redis-url" in out
    standin.fail("GET", "/pods", 403, "Forbidden", 'pods is forbidden: User "tester" cannot list resource "pods"')
    assert rspo(kubeconfig, "status", "--run-id", RUN, "-n", NS) == 1
    err = capsys.readouterr().err
    assert "forbidden: list pods in ml with labels rspo.dev/run-id=exp1" in err and "cannot list" in err


def test_logs_follow_streams_the_learner(
    standin: StandInApi, kubeconfig: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seed_two_runs(standin)
    standin.logs[f"{RUN}-learner-0"] = '{"step": 1, "loss": 0.5}\n{"step": 2, "loss": 0.4}\n'
    assert rspo(kubeconfig, "logs", "--run-id", RUN, "-n", NS, "--follow", "--tail", "10") == 0
    assert capsys.readouterr().out.splitlines() == ['{"step": 1, "loss": 0.5}', '{"step": 2, "loss": 0.4}']
    pods_req, log_req = standin.of("GET")
    assert pods_req.query["labelSelector"] == [f"{mf.RUN_LABEL}={RUN},{mf.COMPONENT_LABEL}=learner"]
    assert log_req.path == f"{COLLECTIONS['Pod']}/{RUN}-learner-0/log"
    assert log_req.query == {"container": ["learner"], "follow": ["true"], "tailLines": ["10"]}


# ---------------------------------------------------------------------------------------------
# scale / down


def test_scale_patches_the_deployment_scale(standin: StandInApi, kubeconfig: Path) -> None:
    assert rspo(kubeconfig, "scale", "rollout", "4", "--run-id", RUN, "-n", NS) == 0
    (scale,) = standin.of("PATCH")
    assert scale.path == f"{COLLECTIONS['Deployment']}/{RUN}-rollout/scale"
    assert scale.headers["content-type"] == "application/merge-patch+json"
    assert scale.body == {"spec": {"replicas": 4}}


def test_scale_warns_under_keda_and_reports_refusal(
    standin: StandInApi, kubeconfig: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    standin.add(
        COLLECTIONS["ScaledObject"],
        labelled("ScaledObject", f"{RUN}-reward", RUN, "reward", spec={"scaleTargetRef": {"name": f"{RUN}-reward"}}),
    )
    standin.fail("PATCH", "/scale", 403, "Forbidden", "cannot patch deployments/scale")
    assert rspo(kubeconfig, "scale", "reward", "3", "--run-id", RUN, "-n", NS) == 1
    err = capsys.readouterr().err
    assert "KEDA ScaledObject manages exp1-reward" in err
    assert "forbidden: scale Deployment ml/exp1-reward to 3" in err


def test_down_deletes_only_the_run_and_keeps_volumes(
    standin: StandInApi, kubeconfig: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seed_two_runs(standin)
    for run in (RUN, "exp2"):
        standin.add(
            COLLECTIONS["PersistentVolumeClaim"], labelled("PersistentVolumeClaim", f"{run}-ckpt", run, "learner")
        )
        standin.add(COLLECTIONS["ConfigMap"], labelled("ConfigMap", f"{run}-cfg", run, "config"))
    standin.fail("GET", "/scaledobjects", 404, "NotFound", "the server could not find the requested resource")
    assert rspo(kubeconfig, "down", "--run-id", RUN, "-n", NS) == 0
    deleted = {r.path for r in standin.of("DELETE")}
    assert deleted == {
        f"{COLLECTIONS['Deployment']}/{RUN}-rollout",
        f"{COLLECTIONS['Deployment']}/{RUN}-reward",
        f"{COLLECTIONS['Deployment']}/{RUN}-learner",
        f"{COLLECTIONS['StatefulSet']}/{RUN}-redis",
        f"{COLLECTIONS['ConfigMap']}/{RUN}-cfg",
    }
    assert all(r.query == {"propagationPolicy": ["Background"]} or r.body for r in standin.of("DELETE"))
    assert {r.query["labelSelector"][0] for r in standin.of("GET")} == {f"{mf.RUN_LABEL}={RUN}"}
    assert f"kept PersistentVolumeClaim {NS}/{RUN}-ckpt" in capsys.readouterr().out
    standin.requests.clear()
    assert rspo(kubeconfig, "down", "--run-id", RUN, "-n", NS, "--delete-volumes") == 0
    assert f"{COLLECTIONS['PersistentVolumeClaim']}/{RUN}-ckpt" in {r.path for r in standin.of("DELETE")}


def test_down_reports_forbidden_delete(
    standin: StandInApi, kubeconfig: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seed_two_runs(standin)
    standin.fail("DELETE", "/deployments/", 403, "Forbidden", "cannot delete deployments")
    assert rspo(kubeconfig, "down", "--run-id", RUN, "-n", NS) == 1
    assert "forbidden: delete Deployment ml/exp1-" in capsys.readouterr().err


def test_namespace_defaults_to_the_kube_context(standin: StandInApi, kubeconfig: Path) -> None:
    assert rspo(kubeconfig, "scale", "rollout", "1", "--run-id", RUN) == 0
    assert standin.of("PATCH")[0].path.startswith("/apis/apps/v1/namespaces/ml/")


def test_python_module_entry_point_has_the_commands() -> None:
    cmd = [sys.executable, "-m", "services.k8s", "--help"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    for command in ("launch", "wait", "status", "logs", "scale", "down"):
        assert command in proc.stdout
