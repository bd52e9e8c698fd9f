"""`services.k8s.manifests.prepare_run`: pure renaming/relabelling, no API server involved."""

from __future__ import annotations

import pytest
from deploy_helpers import render

from services.common.errors import ConfigError
from services.k8s import manifests as mf

SERVICES = {"redis": "r1-redis", "reward": "r1-reward"}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("redis://redis:6379/0", "redis://r1-redis:6379/0"),
        ("rediss://:pw@redis:6380/2", "rediss://:pw@r1-redis:6380/2"),
        ("reward:50052", "r1-reward:50052"),
        ("redis.rspo.svc.cluster.local:6379", "r1-redis.team.svc.cluster.local:6379"),
        ("learner:50053", "learner:50053"),  # not a Service of this set: untouched
        ("redis.example.com:6379", "redis.example.com:6379"),  # outside the cluster: untouched
        ("/tmp", "/tmp"),
        ("0.0.0.0", "0.0.0.0"),
    ],
)
def test_rename_address(value: str, expected: str) -> None:
    assert mf.rename_address(value, SERVICES, "team") == expected


def test_two_runs_in_one_namespace_select_disjoint_pods() -> None:
    a = mf.prepare_run(render("base"), run_id="a", namespace="ml")
    b = mf.prepare_run(render("base"), run_id="b", namespace="ml")
    names_a = {(o["kind"], o["metadata"]["name"]) for o in a}
    names_b = {(o["kind"], o["metadata"]["name"]) for o in b}
    assert not names_a & names_b
    pods_b = [o["spec"]["template"]["metadata"]["labels"] for o in b if o["kind"] in mf.WORKLOAD_KINDS]
    for o in a:
        spec = o.get("spec") or {}
        selectors = []
        if o["kind"] == "Service":
            selectors.append(spec["selector"])
        elif o["kind"] in (*mf.WORKLOAD_KINDS, "PodDisruptionBudget"):
            selectors.append(spec["selector"]["matchLabels"])
        elif o["kind"] == "NetworkPolicy":
            selectors.append(spec["podSelector"]["matchLabels"])
        for sel in selectors:
            assert not any(all(labels.get(k) == v for k, v in sel.items()) for labels in pods_b), o["metadata"]["name"]


def test_input_is_not_mutated_and_order_is_apply_order() -> None:
    objs = render("cpu-smoke")
    before = repr(objs)
    out = mf.prepare_run(objs, run_id="r1", namespace="ml")
    assert repr(objs) == before
    orders = [mf.kind_info(o).order for o in out]
    assert orders == sorted(orders)


def test_rejects_unsupported_kinds_bad_run_ids_and_bad_configs() -> None:
    with pytest.raises(mf.ManifestError, match=r"unsupported object rbac\.authorization\.k8s\.io/v1 Role"):
        mf.prepare_run(
            [{"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "x"}}],
            run_id="r1",
            namespace="ml",
        )
    for bad in ("UPPER", "-x", "x" * 25, "a_b"):
        with pytest.raises(mf.ManifestError, match="run id"):
            mf.check_run_id(bad)
    with pytest.raises(ConfigError, match=r"task\.k"):
        mf.prepare_run(render("base"), run_id="r1", namespace="ml", config_text="task:\n  n: 2\n  k: 4\n")


def test_new_run_id_is_valid() -> None:
    assert mf.check_run_id(mf.new_run_id())
