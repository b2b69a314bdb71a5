"""What a reconcile pass costs the API server, counted by the in-memory client (reads included).

Before the pass used the body kopf hands it and listed each child kind once, a pass that changed
nothing made 21 calls for the GPU example (23 with a managed Redis): a GET of the
ServingDeployment, one GET per child, 3 more for the pools' status, and 5 lists to prune. Every
owned-Deployment event paid the same again.
Secrets are not listed (the operator may create them but not read them): the internal key
Secret and the managed Redis password Secret cost one create each a pass, answered 409 once
they exist.
"""

from __future__ import annotations

import logging

from lamina_operator.handlers.serving import on_child_event

NS = "serving"
SD = ("lamina.dev/v1alpha1", "ServingDeployment", NS)
LISTS = [("list", kind, "") for kind in
         ("ConfigMap", "Service", "Deployment", "PodDisruptionBudget",
          "NetworkPolicy")]  # fmt: skip
LOG = logging.getLogger("test")


def _settled(cluster, reconciler, name):
    """Run the first pass (creates everything), then return the body for the next one."""
    reconciler.reconcile(cluster.get(*SD, name))
    body = cluster.get(*SD, name)
    cluster.calls.clear()
    return body


def _owners(cluster, name):
    return {(NS, name): [cluster.get(*SD, name)]}


def test_no_op_pass_lists_each_child_kind_once(cluster, reconciler, sd_factory, gpu_spec):
    sd_factory("qwen", gpu_spec)
    body = _settled(cluster, reconciler, "qwen")
    assert reconciler.reconcile(body).actions == []
    # The two objects the spec references are read; nothing else is, and nothing is written
    # (the internal key Secret's create is refused: it exists).
    assert cluster.calls == [
        ("get", "Secret", "kv-redis"),
        ("get", "AutoscalingPolicy", "latency-slo"),
        *LISTS,
        ("create", "Secret", "qwen-internal"),
    ]


def test_no_op_pass_with_managed_redis_costs_one_list_per_kind_and_a_refused_create(
    cluster, reconciler, sd_factory, minimal_spec
):
    sd_factory("demo", minimal_spec)
    body = _settled(cluster, reconciler, "demo")
    secrets = [cluster.get("v1", "Secret", NS, f"demo-{s}") for s in ("internal", "redis-auth")]
    cluster.calls.clear()
    assert reconciler.reconcile(body).actions == []
    assert cluster.calls == [
        *LISTS,
        ("create", "Secret", "demo-internal"),
        ("create", "Secret", "demo-redis-auth"),
    ]
    # 409: both left as they were
    assert [cluster.get("v1", "Secret", NS, f"demo-{s}") for s in ("internal", "redis-auth")] == (
        secrets
    )


def test_owned_deployment_event_costs_one_list(cluster, reconciler, sd_factory, gpu_spec):
    sd_factory("qwen", gpu_spec)
    _settled(cluster, reconciler, "qwen")
    child = cluster.get("apps/v1", "Deployment", NS, "qwen-decode")
    owners = _owners(cluster, "qwen")
    cluster.calls.clear()
    on_child_event(reconciler, "MODIFIED", child, owners, LOG)
    assert cluster.calls == [("list", "Deployment", "")]  # status unchanged: no write

    # The decode pods become ready: the same single list, and one status write.
    cluster.set_status("apps/v1", "Deployment", NS, "qwen-decode",
                       {"observedGeneration": 1, "readyReplicas": 3, "updatedReplicas": 3})  # fmt: skip
    owners = _owners(cluster, "qwen")
    cluster.calls.clear()
    on_child_event(reconciler, "MODIFIED", child, owners, LOG)
    assert cluster.calls == [
        ("list", "Deployment", ""),
        ("patch/status", "ServingDeployment", "qwen"),
    ]
    pools = {p["name"]: p for p in cluster.get(*SD, "qwen")["status"]["pools"]}
    assert pools["decode"]["readyReplicas"] == 3 and pools["prefill"]["readyReplicas"] == 0


def test_deleted_child_is_recreated_by_a_full_pass(cluster, reconciler, sd_factory, gpu_spec):
    sd_factory("qwen", gpu_spec)
    _settled(cluster, reconciler, "qwen")
    child = cluster.get("apps/v1", "Deployment", NS, "qwen-router")
    cluster.delete("apps/v1", "Deployment", NS, "qwen-router")
    on_child_event(reconciler, "DELETED", child, _owners(cluster, "qwen"), LOG)
    assert cluster.get("apps/v1", "Deployment", NS, "qwen-router") is not None


def test_child_event_leaves_a_blocked_owner_to_its_retries(
    cluster, reconciler, sd_factory, gpu_spec
):
    gpu_spec["engine"]["kvTransfer"]["redis"]["passwordSecretRef"]["name"] = "not-yet"
    sd_factory("qwen", gpu_spec)
    _settled(cluster, reconciler, "qwen")
    degraded = cluster.get(*SD, "qwen")["status"]
    child = {"metadata": {"name": "qwen-decode", "namespace": NS, "labels": {
        "lamina.dev/deployment": "qwen", "app.kubernetes.io/managed-by": "lamina-operator"}}}  # fmt: skip
    owners = _owners(cluster, "qwen")
    cluster.calls.clear()
    on_child_event(reconciler, "MODIFIED", child, owners, LOG)
    # A status-only refresh cannot know the Secret is still missing: it must not clear Degraded.
    assert cluster.calls == [] and cluster.get(*SD, "qwen")["status"] == degraded


def test_child_event_of_a_gone_owner_does_nothing(cluster, reconciler, sd_factory, gpu_spec):
    sd_factory("qwen", gpu_spec)
    _settled(cluster, reconciler, "qwen")
    child = cluster.get("apps/v1", "Deployment", NS, "qwen-decode")
    cluster.calls.clear()
    on_child_event(reconciler, "MODIFIED", child, {}, LOG)
    assert cluster.calls == []
