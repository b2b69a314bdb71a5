"""Every file in manifests/ is accepted by the API server, and the AutoscalingPolicy example is
accepted by the operator too (Ready=True); an incoherent copy is refused with a reason."""

from __future__ import annotations

from pathlib import Path

import pytest
from kube import Kubectl, condition, load_yaml_docs, wait_for

REPO = Path(__file__).resolve().parents[1]
POLICY = "autoscalingpolicies.lamina.dev"
EXAMPLES = sorted((REPO / "manifests").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_passes_server_side_validation(admin, installed, path):
    # Server dry run: admission and schema validation run in full, nothing is stored.
    out = admin.run("apply", "--dry-run=server", "--validate=false", "-f", str(path))
    assert "(server dry run)" in out


def policy_ready(admin: Kubectl, name: str) -> dict | None:
    obj = admin.get(POLICY, name)
    cond = condition(obj, "Ready")
    if cond and obj["status"].get("observedGeneration") == obj["metadata"]["generation"]:
        return cond
    return None


def test_the_example_policy_is_accepted(admin, operator):
    (policy,) = load_yaml_docs(REPO / "manifests" / "autoscalingpolicy.yaml")
    admin.apply(policy)
    name = policy["metadata"]["name"]
    try:
        cond = wait_for("Ready on the example policy", lambda: policy_ready(admin, name), 60)
        assert cond["status"] == "True", cond
    finally:
        admin.delete(POLICY, name)


def test_a_policy_with_min_above_max_is_refused_with_the_reason(admin, operator):
    (policy,) = load_yaml_docs(REPO / "manifests" / "autoscalingpolicy.yaml")
    policy["metadata"]["name"] = "min-above-max"
    policy["spec"]["decode"] = {"minReplicas": 9, "maxReplicas": 3}
    admin.apply(policy)
    try:
        cond = wait_for("Ready on min-above-max", lambda: policy_ready(admin, "min-above-max"), 60)
        assert cond["status"] == "False", cond
        assert "decode.minReplicas" in cond["message"], cond
    finally:
        admin.delete(POLICY, "min-above-max")
