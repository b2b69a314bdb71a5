"""manifests/minimal.yaml through its whole life against a real API server and controller-manager:
children with owner references, status and events, a pool update, an operator restart, deletion.

The tests run in file order and share one ServingDeployment (module fixture `minimal`).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from kube import Kubectl, condition, load_yaml_docs, wait_for
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from operator_process import wait_until_acting
from setup_cluster import WORK_NAMESPACE

from lamina_operator.kube.rest import RestKubeClient
from lamina_operator.reconcile import ListRecorder, Reconciler

REPO = Path(__file__).resolve().parents[1]
NAME = "minimal"
SD = "servingdeployments.lamina.dev"
DEPLOYMENT_LABEL = "lamina.dev/deployment"
ROLE_LABEL = "lamina.dev/role"
CHILD_KINDS = ("deployments", "services", "configmaps", "poddisruptionbudgets", "secrets")
CAMEL = re.compile(r"^[A-Z][A-Za-z0-9]*$")


def observed(admin: Kubectl) -> dict | None:
    """The ServingDeployment once the operator has acted on its current generation."""
    obj = admin.get(SD, NAME)
    status = (obj or {}).get("status") or {}
    if obj and status.get("observedGeneration") == obj["metadata"]["generation"]:
        return obj
    return None


def owned(admin: Kubectl, kind: str, owner: dict) -> list[dict]:
    return admin.owned_by(kind, owner["metadata"]["uid"])


def by_role(objects: list[dict]) -> dict[str, dict]:
    return {
        o["metadata"].get("labels", {}).get(ROLE_LABEL, o["metadata"]["name"]): o for o in objects
    }


def snapshot(admin: Kubectl) -> dict[tuple[str, str], tuple[str, int]]:
    """(kind, name) -> (uid, generation) of every child, for "what changed" comparisons."""
    out = {}
    for kind in CHILD_KINDS:
        for obj in admin.list(kind, "-l", f"{DEPLOYMENT_LABEL}={NAME}"):
            meta = obj["metadata"]
            out[(kind, meta["name"])] = (meta["uid"], meta.get("generation", 0))
    return out


@pytest.fixture(scope="module")
def minimal(admin: Kubectl, operator) -> dict:
    admin.apply(load_yaml_docs(REPO / "manifests" / "minimal.yaml"))
    obj = wait_for("the operator to observe manifests/minimal.yaml", lambda: observed(admin), 60)
    yield obj
    admin.delete(SD, NAME, "--wait=false")


def test_children_are_created_and_owned_by_the_servingdeployment(admin, minimal):
    deployments = wait_for(
        "prefill, decode, router Deployments",
        lambda: (
            (d := by_role(owned(admin, "deployments", minimal)))
            and {"prefill", "decode", "router"} <= d.keys()
            and d
        ),
        60,
    )
    for kind in ("services", "configmaps", "poddisruptionbudgets"):
        assert owned(admin, kind, minimal), f"no {kind} owned by {NAME}"
    # minimal.yaml asks for a managed Redis: its password is generated into an owned Secret.
    assert owned(admin, "secrets", minimal), "no generated Redis password Secret"
    for kind in CHILD_KINDS:
        for child in owned(admin, kind, minimal):
            (ref,) = [
                r
                for r in child["metadata"]["ownerReferences"]
                if r["uid"] == minimal["metadata"]["uid"]
            ]
            assert ref["kind"] == "ServingDeployment" and ref["controller"] is True, child[
                "metadata"
            ]
            assert child["metadata"]["labels"][DEPLOYMENT_LABEL] == NAME
    for role in ("prefill", "decode", "router"):
        assert deployments[role]["spec"]["replicas"] == 1, role


def test_engine_pods_are_locked_down_and_probed(admin, minimal):
    for deploy in owned(admin, "deployments", minimal):
        spec = deploy["spec"]["template"]["spec"]
        pod_sc = spec.get("securityContext") or {}
        for container in spec["containers"]:
            sc = container.get("securityContext") or {}
            where = f"{deploy['metadata']['name']}/{container['name']}"
            assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, where
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert sc.get("readOnlyRootFilesystem") is True, where
            assert "ALL" in sc.get("capabilities", {}).get("drop", []), where
            assert container.get("readinessProbe") and container.get("livenessProbe"), where
        if deploy["metadata"]["labels"][ROLE_LABEL] in ("prefill", "decode", "router"):
            (engine,) = [c for c in spec["containers"] if c["readinessProbe"].get("httpGet")]
            assert engine["readinessProbe"]["httpGet"]["path"] == "/health"


def test_pods_are_created_but_not_ready_without_a_kubelet(admin, minimal):
    if admin.list("nodes"):
        pytest.skip("this cluster has nodes: pods may really run, readiness is not asserted")
    pods = wait_for(
        "the controller-manager to create the pods",
        lambda: len(p := admin.list("pods", "-l", f"{DEPLOYMENT_LABEL}={NAME}")) >= 3 and p,
        60,
    )
    assert {p["status"].get("phase") for p in pods} == {"Pending"}
    obj = wait_for(
        "a Ready condition", lambda: condition(observed(admin), "Ready") and observed(admin)
    )
    ready = condition(obj, "Ready")
    assert ready["status"] == "False", ready
    assert CAMEL.match(ready["reason"]) and ready["message"], ready


def test_status_reports_conditions_pools_and_endpoint(admin, minimal):
    obj = wait_for(
        "status.pools", lambda: (o := observed(admin)) and o["status"].get("pools") and o
    )
    status = obj["status"]
    for ctype in ("Ready", "Progressing", "Degraded"):
        cond = condition(obj, ctype)
        assert cond is not None, f"no {ctype} condition in {status['conditions']}"
        assert cond["status"] in ("True", "False", "Unknown") and CAMEL.match(cond["reason"])
    assert condition(obj, "Degraded")["status"] == "False", condition(obj, "Degraded")
    pools = {p["name"]: p for p in status["pools"]}
    for role in ("prefill", "decode", "router"):
        assert pools[role]["desiredReplicas"] == 1, pools
    assert status["endpoint"].startswith("http://") and NAME in status["endpoint"]
    # What `kubectl get` shows, through the CRD's printer columns.
    table = admin.run("get", SD, NAME)
    header = table.splitlines()[0].split()
    assert header[:1] == ["NAME"] and {"READY", "PREFILL", "DECODE", "ENDPOINT", "AGE"} <= set(
        header
    )
    assert status["endpoint"] in table


def test_a_pass_with_nothing_to_do_costs_one_list_per_kind(admin, minimal, operator_kubeconfig):
    """The reconcile pass, in this process, under the operator's identity, on the converged
    object: one list per child kind and the two owned Secrets' refused creates; no other
    read and no write but the status, and the status only when the Deployments moved since the
    operator wrote it (the controller-manager keeps updating them, so that race is real: CI saw
    it). tests/operator/test_api_cost.py has the breakdown."""
    wait_for("status.pools", lambda: (o := observed(admin)) and o["status"].get("pools"))
    config = k8s.Configuration()
    k8s_config.load_kube_config(str(operator_kubeconfig), client_configuration=config)
    client = RestKubeClient(config)
    sent: list[tuple[str, str]] = []
    send = client._call

    def recording(method, path, *args, **kwargs):
        sent.append((method, path.rsplit("/", 1)[-1]))  # lists: the plural; writes: the name
        return send(method, path, *args, **kwargs)

    client._call = recording  # type: ignore[method-assign]
    reconciler = Reconciler(client, ListRecorder())
    plurals = ("configmaps", "services", "deployments", "poddisruptionbudgets", "networkpolicies")
    lists = [("GET", plural) for plural in plurals]

    def one_pass() -> list[tuple[str, str]]:
        sent.clear()
        body = admin.get(SD, NAME)
        outcome = reconciler.reconcile(body)
        assert outcome.problems == [] and outcome.actions == []
        writes = [call for call in sent if call[0] == "PATCH"]
        moved = any(body["status"].get(k) != v for k, v in (outcome.status or {}).items())
        assert writes == ([("PATCH", "status")] if moved else []), (writes, moved)
        return [call for call in sent if call[0] != "PATCH"]

    first = one_pass()
    creates = [("POST", "secrets")] * 2  # the internal key's and Redis password's, both 409
    assert sorted(first) == sorted(
        [*lists, ("GET", "v1"), *creates]
    ), first  # + asking once whether policy/v1 is served (GET /apis/policy/v1)
    assert sorted(one_pass()) == sorted([*lists, *creates])


def test_events_say_what_the_operator_did(admin, minimal):
    events = wait_for(
        "Normal events on the ServingDeployment",
        lambda: [e for e in admin.events_for("ServingDeployment", NAME) if e["type"] == "Normal"],
        30,
    )
    assert all(CAMEL.match(e["reason"]) and e["message"] for e in events), events


def test_scaling_decode_changes_only_the_decode_deployment(admin, minimal):
    before = snapshot(admin)
    admin.run("patch", SD, NAME, "--type=merge", "-p", '{"spec":{"decode":{"replicas":3}}}')
    obj = wait_for("the operator to observe the new decode replicas", lambda: observed(admin), 60)
    decode = wait_for(
        "decode Deployment at 3 replicas",
        lambda: (
            (d := by_role(owned(admin, "deployments", obj)).get("decode"))
            and d["spec"]["replicas"] == 3
            and d
        ),
        30,
    )
    after = snapshot(admin)
    changed = {key for key in before if before[key] != after.get(key)}
    assert changed == {("deployments", decode["metadata"]["name"])}, changed
    assert set(after) == set(before), "children appeared or vanished on a replica change"
    pools = {p["name"]: p for p in observed(admin)["status"]["pools"]}
    assert pools["decode"]["desiredReplicas"] == 3 and pools["prefill"]["desiredReplicas"] == 1


def test_operator_restart_converges_without_duplicates(admin, minimal, operator):
    before = snapshot(admin)
    operator.stop()
    operator.start()
    wait_for("the restarted operator's liveness endpoint", operator.healthy, 60)
    wait_until_acting(admin, WORK_NAMESPACE)
    # It now handles objects; its resume handlers reconcile `minimal` too. Give them a few
    # seconds, then nothing may have been recreated, duplicated or changed.
    time.sleep(8)
    assert snapshot(admin) == before
    assert observed(admin) is not None


def test_deleting_the_servingdeployment_garbage_collects_every_child(admin, minimal):
    assert snapshot(admin), "no children to delete"
    admin.delete(SD, NAME, "--timeout=60s")
    assert admin.get(SD, NAME) is None
    wait_for(
        "garbage collection of every child and pod",
        lambda: (
            not snapshot(admin)
            and not admin.list("pods", "-l", f"{DEPLOYMENT_LABEL}={NAME}")
            and not admin.list("replicasets", "-l", f"{DEPLOYMENT_LABEL}={NAME}")
        ),
        120,
    )
