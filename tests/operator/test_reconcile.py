"""The reconcile pass against the in-memory API server: idempotence, targeted updates, restart
convergence, pruning, and what a user sees for problems the schema cannot catch."""

from __future__ import annotations

import base64
import logging

import kopf
import pytest

from lamina_operator.constants import LAST_APPLIED_ANNOTATION
from lamina_operator.handlers.serving import reconcile_serving
from lamina_operator.kube import KubeError
from lamina_operator.reconcile import ListRecorder, Reconciler

NS = "serving"
SD = ("lamina.dev/v1alpha1", "ServingDeployment", NS)


LOG = logging.getLogger("test.reconcile")


def _pass(reconciler, name):
    """One pass over the ServingDeployment as kopf would hand it (its body read beforehand)."""
    return reconciler.reconcile(reconciler.client.get(*SD, name))


def _status(cluster, name):
    return cluster.get(*SD, name)["status"]


def _cond(cluster, name, kind):
    return next(c for c in _status(cluster, name)["conditions"] if c["type"] == kind)


def _set_spec(cluster, name, patch):
    cluster.patch(*SD, name, {"spec": patch})


def test_first_pass_creates_children_second_writes_nothing(
    cluster, reconciler, sd_factory, gpu_spec
):
    sd_factory("qwen", gpu_spec)
    outcome = _pass(reconciler, "qwen")
    assert outcome.problems == []
    created = sorted((a.kind, a.name) for a in outcome.actions)
    assert created == sorted(
        [("ConfigMap", "qwen-engine"), ("Secret", "qwen-internal")]
        + [(k, f"qwen-{r}") for r in ("prefill", "decode", "router")
           for k in ("Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy")]
    )  # fmt: skip
    before = len(cluster.writes)
    again = _pass(reconciler, "qwen")
    assert again.actions == [] and cluster.writes[before:] == []  # not even a status write
    assert _status(cluster, "qwen")["endpoint"] == "http://qwen-router.serving.svc:8000"
    assert _status(cluster, "qwen")["observedGeneration"] == 1


def test_pool_update_touches_only_that_pool(cluster, reconciler, sd_factory, gpu_spec):
    sd_factory("qwen", gpu_spec)
    _pass(reconciler, "qwen")
    before = len(cluster.writes)
    _set_spec(cluster, "qwen", {"decode": {"replicas": 5}})
    outcome = _pass(reconciler, "qwen")
    writes = [w for w in cluster.writes[before:] if w[1] != "ServingDeployment"]
    assert writes == [("patch", "Deployment", "qwen-decode")]
    assert outcome.actions[0].fields == ("spec.replicas",)
    assert cluster.get("apps/v1", "Deployment", NS, "qwen-decode")["spec"]["replicas"] == 5
    pools = {p["name"]: p for p in _status(cluster, "qwen")["pools"]}
    assert pools["decode"]["desiredReplicas"] == 5 and pools["prefill"]["desiredReplicas"] == 2
    assert _status(cluster, "qwen")["observedGeneration"] == 2


def test_engine_change_rolls_every_pool_and_removes_dropped_fields(
    cluster, reconciler, sd_factory, gpu_spec
):
    sd_factory("qwen", gpu_spec)
    _pass(reconciler, "qwen")
    _set_spec(
        cluster,
        "qwen",
        {"engine": {"speed": {"enabled": False}}, "prefill": {"nodeSelector": None}},
    )
    before = len(cluster.writes)
    _pass(reconciler, "qwen")
    patched = sorted(w[2] for w in cluster.writes[before:] if w[1] != "ServingDeployment")
    assert patched == ["qwen-decode", "qwen-engine", "qwen-prefill", "qwen-router"]
    cm = cluster.get("v1", "ConfigMap", NS, "qwen-engine")["data"]
    assert not [name for name in cm if name.startswith("LAMINA_SPEED")]
    prefill = cluster.get("apps/v1", "Deployment", NS, "qwen-prefill")
    assert "nodeSelector" not in prefill["spec"]["template"]["spec"]


def test_restarted_operator_converges_without_duplicates(cluster, sd_factory, gpu_spec, clock):
    sd_factory("qwen", gpu_spec)
    first = Reconciler(cluster, ListRecorder(), clock)
    _pass(first, "qwen")
    objects = cluster.kinds(NS)
    before = len(cluster.writes)
    second = Reconciler(cluster, ListRecorder(), clock)  # a new process, same API server
    assert _pass(second, "qwen").actions == []
    assert cluster.kinds(NS) == objects and cluster.writes[before:] == []


def test_restart_mid_way_finishes_the_job(cluster, reconciler, sd_factory, gpu_spec):
    sd_factory("qwen", gpu_spec)
    _pass(reconciler, "qwen")
    # as if the operator died after creating only some children
    cluster.delete("apps/v1", "Deployment", NS, "qwen-router")
    cluster.delete("v1", "Service", NS, "qwen-router")
    outcome = _pass(reconciler, "qwen")
    assert sorted((a.verb, a.kind, a.name) for a in outcome.actions) == [
        ("Created", "Deployment", "qwen-router"),
        ("Created", "Service", "qwen-router"),
    ]


def test_managed_redis_secret_is_kept_and_pruned_when_unused(
    cluster, reconciler, sd_factory, minimal_spec
):
    sd_factory("demo", minimal_spec)
    _pass(reconciler, "demo")
    secret = cluster.get("v1", "Secret", NS, "demo-redis-auth")
    password = base64.b64decode(secret["data"]["password"]).decode()
    assert len(password) >= 32 and LAST_APPLIED_ANNOTATION not in (
        secret["metadata"].get("annotations") or {}
    )
    _pass(reconciler, "demo")
    assert cluster.get("v1", "Secret", NS, "demo-redis-auth")["data"] == secret["data"]
    _set_spec(cluster, "demo", {"engine": {"kvTransfer": {"redis": {
        "url": "redis://redis.kv.svc:6379/0", "passwordSecretRef": {"name": "kv-redis"}}}}})  # fmt: skip
    outcome = _pass(reconciler, "demo")
    deleted = sorted((a.kind, a.name) for a in outcome.actions if a.verb == "Deleted")
    assert deleted == [
        ("Deployment", "demo-redis"),
        ("NetworkPolicy", "demo-redis"),
        ("Secret", "demo-redis-auth"),
        ("Service", "demo-redis"),
    ]


def test_missing_secret_is_degraded_retryable_and_heals(
    cluster, recorder, reconciler, sd_factory, gpu_spec
):
    gpu_spec["engine"]["kvTransfer"]["redis"]["passwordSecretRef"]["name"] = "not-yet"
    sd_factory("qwen", gpu_spec)
    outcome = _pass(reconciler, "qwen")
    assert [p.reason for p in outcome.problems] == ["MissingSecret"] and outcome.retryable
    assert cluster.kinds(NS) == [("AutoscalingPolicy", "latency-slo"), ("Secret", "kv-redis"),
                                 ("ServingDeployment", "qwen")]  # fmt: skip
    degraded = _cond(cluster, "qwen", "Degraded")
    assert degraded["status"] == "True" and degraded["reason"] == "MissingSecret"
    assert "create it with the Redis password under key 'password'" in degraded["message"]
    assert _cond(cluster, "qwen", "Ready")["status"] == "False"
    assert recorder.events[-1][:2] == ("Warning", "MissingSecret")
    warnings = len(recorder.events)
    _pass(reconciler, "qwen")  # same problem again: no second warning, no status write
    assert len(recorder.events) == warnings
    with pytest.raises(kopf.TemporaryError):
        reconcile_serving(reconciler, cluster.get(*SD, "qwen"), LOG)
    cluster.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "not-yet", "namespace": NS},
                    "stringData": {"password": "pw"}})  # fmt: skip
    reconcile_serving(reconciler, cluster.get(*SD, "qwen"), LOG)
    assert _cond(cluster, "qwen", "Degraded")["status"] == "False"


def test_secret_without_the_key(cluster, reconciler, sd_factory, gpu_spec):
    gpu_spec["engine"]["kvTransfer"]["redis"]["passwordSecretRef"]["key"] = "redis-password"
    sd_factory("qwen", gpu_spec)
    problem = _pass(reconciler, "qwen").problems[0]
    assert problem.reason == "MissingSecretKey"
    assert "has no key 'redis-password' (it has ['password'])" in problem.message


def test_policy_ref_missing_then_invalid(cluster, reconciler, sd_factory, gpu_spec):
    gpu_spec["autoscaling"]["policyRef"]["name"] = "other"
    sd_factory("qwen", gpu_spec)
    assert _pass(reconciler, "qwen").problems[0].reason == "PolicyNotFound"
    cluster.create({"apiVersion": "lamina.dev/v1alpha1", "kind": "AutoscalingPolicy",
                    "metadata": {"name": "other", "namespace": NS},
                    "spec": {"decode": {"minReplicas": 4, "maxReplicas": 2}}})  # fmt: skip
    problem = _pass(reconciler, "qwen").problems[0]
    assert problem.reason == "InvalidPolicy" and "decode.minReplicas (4)" in problem.message


def test_invalid_spec_is_permanent(cluster, reconciler, sd_factory, gpu_spec):
    gpu_spec["decode"]["replicas"] = 0
    sd_factory("qwen", gpu_spec)
    with pytest.raises(kopf.PermanentError, match="set decode.replicas >= 1"):
        reconcile_serving(reconciler, cluster.get(*SD, "qwen"), LOG)
    assert _cond(cluster, "qwen", "Degraded")["reason"] == "InvalidSpec"
    assert not [k for k in cluster.kinds(NS) if k[0] == "Deployment"]


def test_too_long_name(reconciler, sd_factory, minimal_spec):
    sd_factory("a" * 56, minimal_spec)
    problem = _pass(reconciler, "a" * 56).problems[0]
    assert problem.reason == "InvalidName" and not problem.retryable


def test_foreign_object_is_not_taken_over(cluster, reconciler, sd_factory, gpu_spec):
    other_owner = {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "name": "x",
        "uid": "u-x",
        "controller": True,
    }
    cluster.create({"apiVersion": "v1", "kind": "Service", "metadata": {
        "name": "qwen-router", "namespace": NS, "ownerReferences": [other_owner]}, "spec": {}})  # fmt: skip
    sd_factory("qwen", gpu_spec)
    outcome = _pass(reconciler, "qwen")
    assert outcome.problems[0].reason == "NameConflict"
    assert "controlled by ReplicaSet/x" in outcome.problems[0].message
    assert cluster.get("v1", "Service", NS, "qwen-router")["spec"] == {}


def test_orphan_with_our_name_is_adopted(cluster, reconciler, sd_factory, gpu_spec):
    cluster.create({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": "qwen-engine", "namespace": NS}, "data": {"old": "1"}})  # fmt: skip
    sd = sd_factory("qwen", gpu_spec)
    outcome = _pass(reconciler, "qwen")
    assert ("Adopted", "ConfigMap", "qwen-engine") in [
        (a.verb, a.kind, a.name) for a in outcome.actions
    ]
    cm = cluster.get("v1", "ConfigMap", NS, "qwen-engine")
    assert cm["metadata"]["ownerReferences"][0]["uid"] == sd["metadata"]["uid"]
    assert cm["data"]["LAMINA_SCHEDULING_POLICY"] == "layered"


def test_status_follows_children(cluster, reconciler, sd_factory, gpu_spec, clock):
    sd_factory("qwen", gpu_spec)
    _pass(reconciler, "qwen")
    assert _cond(cluster, "qwen", "Ready")["status"] == "False"
    for role, ready in (("prefill", 2), ("decode", 3), ("router", 2)):
        cluster.set_status("apps/v1", "Deployment", NS, f"qwen-{role}", {
            "observedGeneration": 1, "readyReplicas": ready, "updatedReplicas": ready})  # fmt: skip
    clock.now = "2026-01-01T00:05:00Z"
    _pass(reconciler, "qwen")
    ready = _cond(cluster, "qwen", "Ready")
    assert (ready["status"], ready["reason"]) == ("True", "AllPoolsReady")
    assert ready["lastTransitionTime"] == "2026-01-01T00:05:00Z"
    assert _cond(cluster, "qwen", "Disaggregated")["status"] == "True"
    assert _cond(cluster, "qwen", "Progressing")["status"] == "False"
    assert _cond(cluster, "qwen", "Degraded")["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    cluster.set_status("apps/v1", "Deployment", NS, "qwen-prefill",
                       {"observedGeneration": 1, "readyReplicas": 0, "updatedReplicas": 2})  # fmt: skip
    _pass(reconciler, "qwen")
    ready = _cond(cluster, "qwen", "Ready")
    assert ready["status"] == "False" and "prefill (0/2 ready)" in ready["message"]
    assert _cond(cluster, "qwen", "Disaggregated")["reason"] == "PoolUnavailable"


def test_pdb_falls_back_to_v1beta1_on_old_servers(cluster, reconciler, sd_factory, minimal_spec):
    cluster.served = {
        "v1",
        "apps/v1",
        "policy/v1beta1",
        "networking.k8s.io/v1",
        "lamina.dev/v1alpha1",
    }
    sd_factory("demo", minimal_spec)
    assert _pass(reconciler, "demo").problems == []
    assert cluster.get("policy/v1beta1", "PodDisruptionBudget", NS, "demo-decode") is not None


def test_api_errors_become_retries_with_a_hint(
    cluster, reconciler, sd_factory, minimal_spec, monkeypatch
):
    sd_factory("demo", minimal_spec)

    def forbidden(obj):
        raise KubeError(403, 'secrets is forbidden: User "op" cannot create resource "secrets"')

    monkeypatch.setattr(cluster, "create", forbidden)
    with pytest.raises(kopf.TemporaryError, match="compare the operator's RBAC"):
        reconcile_serving(reconciler, cluster.get(*SD, "demo"), LOG)
