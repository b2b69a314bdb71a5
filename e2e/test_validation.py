"""Invalid ServingDeployments: the API server rejects what the schema can express; the operator
reports what it cannot (missing Secret, inconsistent pools) as Degraded + a Warning event."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
from kube import Kubectl, KubectlError, condition, load_yaml_docs, wait_for

REPO = Path(__file__).resolve().parents[1]
SD = "servingdeployments.lamina.dev"
CAMEL = re.compile(r"^[A-Z][A-Za-z0-9]*$")


def minimal(name: str) -> dict:
    (doc,) = load_yaml_docs(REPO / "manifests" / "minimal.yaml")
    doc = copy.deepcopy(doc)
    doc["metadata"]["name"] = name
    return doc


def with_spec(name: str, path: str, value) -> dict:
    """minimal.yaml renamed, with the dotted spec `path` set to `value`."""
    doc = minimal(name)
    node = doc["spec"]
    *parents, leaf = path.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value
    return doc


@pytest.mark.parametrize(
    "name, path, value, message",
    [
        ("bad-replicas", "decode.replicas", -1, "spec.decode.replicas"),
        ("bad-policy", "engine.scheduling.policy", "fifo", "spec.engine.scheduling.policy"),
        ("bad-source", "model.source", "ftp://mirror/model", "spec.model.source"),
        ("bad-dtype", "model.dtype", "int3", "spec.model.dtype"),
    ],
)
def test_the_api_server_rejects_specs_the_schema_forbids(
    admin, installed, name, path, value, message
):
    with pytest.raises(KubectlError) as err:
        admin.apply(with_spec(name, path, value))
    # The user sees which field is wrong; nothing is stored.
    assert message in err.value.stderr, err.value.stderr
    assert admin.get(SD, name) is None


def test_a_missing_model_is_a_required_field_error(admin, installed):
    doc = minimal("no-model")
    del doc["spec"]["model"]
    with pytest.raises(KubectlError) as err:
        admin.apply(doc, "--validate=false")
    assert "spec.model: Required value" in err.value.stderr, err.value.stderr
    assert admin.get(SD, "no-model") is None


def degraded(admin: Kubectl, name: str) -> dict | None:
    obj = admin.get(SD, name)
    cond = condition(obj, "Degraded")
    return cond if cond and cond["status"] == "True" else None


def warnings(admin: Kubectl, name: str) -> list[dict]:
    return [e for e in admin.events_for("ServingDeployment", name) if e["type"] == "Warning"]


def test_missing_redis_secret_degrades_with_a_fix_it_message(admin, operator):
    (_, sd) = load_yaml_docs(REPO / "manifests" / "external-redis.yaml")
    sd["metadata"]["name"] = "no-secret"
    sd["spec"]["engine"]["kvTransfer"]["redis"]["passwordSecretRef"]["name"] = "absent-secret"
    admin.apply(sd)
    try:
        cond = wait_for("Degraded=True on no-secret", lambda: degraded(admin, "no-secret"), 60)
        assert CAMEL.match(cond["reason"]) and "absent-secret" in cond["message"], cond
        events = wait_for("a Warning event on no-secret", lambda: warnings(admin, "no-secret"), 30)
        assert any("absent-secret" in e["message"] for e in events), events
        # Reported, not crash-looped: the operator keeps serving.
        assert operator.healthy()
    finally:
        admin.delete(SD, "no-secret")


def test_inconsistent_pools_degrade_instead_of_creating_children(admin, operator):
    doc = minimal("no-decode")
    doc["spec"]["decode"] = {"replicas": 0}
    doc["spec"]["prefill"] = {"replicas": 2}
    admin.apply(doc)
    try:
        cond = wait_for("Degraded=True on no-decode", lambda: degraded(admin, "no-decode"), 60)
        assert "decode.replicas" in cond["message"], cond
        events = wait_for("a Warning event on no-decode", lambda: warnings(admin, "no-decode"), 30)
        assert any("decode.replicas" in e["message"] for e in events), events
        ready = condition(admin.get(SD, "no-decode"), "Ready")
        assert ready is not None and ready["status"] == "False", ready
        assert operator.healthy()
    finally:
        admin.delete(SD, "no-decode")


def test_fixing_an_invalid_spec_clears_degraded(admin, operator):
    doc = minimal("fixed-later")
    doc["spec"]["decode"] = {"replicas": 0}
    admin.apply(doc)
    try:
        wait_for("Degraded=True on fixed-later", lambda: degraded(admin, "fixed-later"), 60)
        admin.run(
            "patch", SD, "fixed-later", "--type=merge", "-p", '{"spec":{"decode":{"replicas":1}}}'
        )
        obj = wait_for(
            "Degraded=False after the fix",
            lambda: (
                (c := condition(o := admin.get(SD, "fixed-later"), "Degraded"))
                and c["status"] == "False"
                and o
            ),
            60,
        )
        assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"]
    finally:
        admin.delete(SD, "fixed-later")
