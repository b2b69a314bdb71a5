"""Condition rules in isolation (see reconcile/status.py for the definitions)."""

from __future__ import annotations

from lamina_operator.api import ServingDeploymentSpec
from lamina_operator.reconcile.checks import Problem
from lamina_operator.reconcile.policy import policy_status
from lamina_operator.reconcile.status import compute_conditions, pool_status, with_transitions


def _dep(ready: int, updated: int | None = None, conditions=None) -> dict:
    return {
        "metadata": {"generation": 1},
        "status": {
            "observedGeneration": 1,
            "readyReplicas": ready,
            "updatedReplicas": ready if updated is None else updated,
            "conditions": conditions or [],
        },
    }


def _conditions(spec_dict, children, problems=()):
    spec = ServingDeploymentSpec.model_validate(spec_dict)
    desired = {
        "prefill": spec.prefill.replicas,
        "decode": spec.decode.replicas,
        "router": spec.router.replicas,
    }
    pools = [pool_status(n, desired[n], children.get(n)) for n in ("prefill", "decode", "router")]
    return {c["type"]: c for c in compute_conditions(spec, list(problems), pools, children)}


def test_decode_only_deployment_is_ready_but_not_disaggregated(minimal_spec):
    minimal_spec["prefill"] = {"replicas": 0}
    conds = _conditions(minimal_spec, {"prefill": _dep(0), "decode": _dep(1), "router": _dep(1)})
    assert conds["Ready"]["status"] == "True"
    assert (conds["Disaggregated"]["status"], conds["Disaggregated"]["reason"]) == (
        "False",
        "DecodeOnly",
    )


def test_rollout_in_progress_and_stuck(minimal_spec):
    minimal_spec["decode"] = {"replicas": 2}
    stuck = [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
              "message": "ReplicaSet has timed out progressing"}]  # fmt: skip
    conds = _conditions(
        minimal_spec,
        {"prefill": _dep(1), "decode": _dep(1, updated=1, conditions=stuck), "router": _dep(1)},
    )
    assert conds["Ready"]["status"] == "True"  # one ready pod per pool still serves
    assert conds["Progressing"]["status"] == "True" and "decode" in conds["Progressing"]["message"]
    assert (conds["Degraded"]["status"], conds["Degraded"]["reason"]) == ("True", "PoolFailing")
    assert "progress deadline" in conds["Degraded"]["message"]


def test_problems_block_every_condition(minimal_spec):
    problem = Problem("MissingSecret", "Secret 'x' does not exist", retryable=True)
    conds = _conditions(minimal_spec, {}, [problem])
    assert conds["Ready"]["status"] == "False" and conds["Ready"]["reason"] == "MissingSecret"
    assert conds["Degraded"]["message"] == "Secret 'x' does not exist"
    assert conds["Disaggregated"]["status"] == "Unknown"
    assert all(c["reason"][0].isupper() and " " not in c["reason"] for c in conds.values())


def test_transition_time_kept_while_status_holds():
    before = [{"type": "Ready", "status": "False", "lastTransitionTime": "T0"}]
    same = with_transitions([{"type": "Ready", "status": "False", "reason": "X"}], before, "T1", 3)
    flipped = with_transitions(
        [{"type": "Ready", "status": "True", "reason": "Y"}], before, "T1", 3
    )
    assert same[0]["lastTransitionTime"] == "T0" and flipped[0]["lastTransitionTime"] == "T1"
    assert flipped[0]["observedGeneration"] == 3


def test_policy_status():
    body = {
        "metadata": {"generation": 2},
        "spec": {"prefill": {"minReplicas": 3, "maxReplicas": 1}},
    }
    status, error = policy_status(body, "T")
    assert error is not None and "prefill.minReplicas (3)" in error
    assert status["conditions"][0]["reason"] == "InvalidPolicy"
    status, error = policy_status({"metadata": {"generation": 1}, "spec": {}}, "T")
    assert error is None and status["conditions"][0]["status"] == "True"


def test_no_empty_strings_in_status(minimal_spec):
    # kube-apiserver 1.20 as built in e2e/ rejects "" in custom resources (reads it as null)
    for children in ({}, {"prefill": _dep(1), "decode": _dep(1), "router": _dep(1)}):
        for cond in _conditions(minimal_spec, children).values():
            assert all(value != "" for value in cond.values()), cond


def test_written_statuses_are_kept_whole_by_the_api_server(
    cluster, reconciler, sd_factory, gpu_spec
):
    # The in-memory server stores any status; a real one validates it and drops undeclared
    # fields, so what the reconciler writes is checked against the committed CRDs.
    from lamina_operator.reconcile import reconcile_policy

    from .test_crds import _schema, _validate

    api, ns = "lamina.dev/v1alpha1", "serving"
    sd = (api, "ServingDeployment", ns)
    policy = (api, "AutoscalingPolicy", ns, gpu_spec["autoscaling"]["policyRef"]["name"])
    sd_schema = _schema("lamina.dev_servingdeployments.yaml")["properties"]["status"]
    policy_schema = _schema("lamina.dev_autoscalingpolicies.yaml")["properties"]["status"]
    cluster.patch(*policy, {"spec": {"decode": {"minReplicas": 4, "maxReplicas": 2}}})
    sd_factory("qwen", gpu_spec)
    reconciler.reconcile(cluster.get(*sd, "qwen"))
    status = cluster.get(*sd, "qwen")["status"]
    assert {c["type"]: c["reason"] for c in status["conditions"]}["Degraded"] == "InvalidPolicy"
    _validate(sd_schema, status)
    for ready in ("False", "True"):  # the invalid policy, then fixed
        reconcile_policy(cluster, cluster.get(*policy), "2026-01-01T00:00:00Z")
        status = cluster.get(*policy)["status"]
        assert status["conditions"][0]["status"] == ready
        _validate(policy_schema, status)
        cluster.patch(*policy, {"spec": {"decode": None}})
    reconciler.reconcile(cluster.get(*sd, "qwen"))  # creates the pools
    for role in ("prefill", "decode", "router"):
        cluster.set_status("apps/v1", "Deployment", ns, f"qwen-{role}", {
            "observedGeneration": 1, "readyReplicas": 1, "updatedReplicas": 1})  # fmt: skip
    reconciler.reconcile(cluster.get(*sd, "qwen"))
    status = cluster.get(*sd, "qwen")["status"]
    assert {c["type"]: c["status"] for c in status["conditions"]}["Degraded"] == "False"
    _validate(sd_schema, status)
