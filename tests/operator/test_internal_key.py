"""The internal key and the public API key: what every pod gets, the `<name>-internal` Secret the
operator creates without ever reading it, and rotation when the operator's seed changes."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from lamina_operator import rbac
from lamina_operator.api import ServingDeploymentSpec
from lamina_operator.builders import BuildContext, Owner, build_children
from lamina_operator.builders.internal_key import (
    FINGERPRINT_ANNOTATION,
    derive,
    seed_from_env,
)
from lamina_operator.reconcile import ListRecorder, Reconciler

NS = "serving"
SD = ("lamina.dev/v1alpha1", "ServingDeployment", NS)
SEED_A = b"a" * 32 + b"-seed-one"
SEED_B = b"b" * 32 + b"-seed-two"
ROLES = ("prefill", "decode", "router")


def test_derive_is_the_contracts_formula_and_separates_deployments():
    expected = base64.urlsafe_b64encode(
        hmac.new(SEED_A, b"serving/qwen/uid-1", hashlib.sha256).digest()
    )
    key = derive(SEED_A, "serving", "qwen", "uid-1")
    assert key == expected.rstrip(b"=").decode() and len(key) == 43
    others = {
        derive(SEED_B, "serving", "qwen", "uid-1"),  # another operator seed
        derive(SEED_A, "other", "qwen", "uid-1"),  # another namespace
        derive(SEED_A, "serving", "qwen2", "uid-1"),  # another name
        derive(SEED_A, "serving", "qwen", "uid-2"),  # the same name, recreated
    }
    assert key not in others and len(others) == 4


def test_seed_from_env():
    assert seed_from_env({}) is None
    assert seed_from_env({"LAMINA_OPERATOR_KEY_SEED": ""}) is None
    assert seed_from_env({"LAMINA_OPERATOR_KEY_SEED": SEED_A.decode()}) == SEED_A
    with pytest.raises(ValueError, match="is 5 bytes.*at least 32 random bytes"):
        seed_from_env({"LAMINA_OPERATOR_KEY_SEED": "short"})


def _built(spec_dict, seed=None):
    spec = ServingDeploymentSpec.model_validate(spec_dict)
    owner = Owner(name="qwen", namespace=NS, uid="uid-1")
    built = build_children(owner, spec, BuildContext(key_seed=seed))
    return {(d.manifest["kind"], d.manifest["metadata"]["name"]): d for d in built}


def _env(built, role):
    container = built[("Deployment", f"qwen-{role}")].manifest["spec"]["template"]["spec"][
        "containers"
    ][0]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_every_pod_gets_the_internal_port_and_key_by_reference(minimal_spec):
    built = _built(minimal_spec, SEED_A)
    for role in ROLES:
        env = _env(built, role)
        assert env["LAMINA_INTERNAL_PORT"] == "8001"
        assert env["LAMINA_INTERNAL_KEY"] == {
            "secretKeyRef": {"name": "qwen-internal", "key": "key"}
        }
        assert "LAMINA_API_KEY" not in env  # none named: the public API stays open
    secret = built[("Secret", "qwen-internal")]
    assert secret.create_only  # never patched, never listed: the operator cannot read Secrets
    assert secret.manifest["stringData"] == {"key": derive(SEED_A, NS, "qwen", "uid-1")}
    # the pools' Services name the internal port (the router's --*-service flags use it)
    for role in ("prefill", "decode"):
        ports = built[("Service", f"qwen-{role}")].manifest["spec"]["ports"]
        assert ports[0] == {
            "name": "internal",
            "port": 8001,
            "targetPort": "internal",
            "protocol": "TCP",
        }
    router_ports = built[("Service", "qwen-router")].manifest["spec"]["ports"]
    assert [p["port"] for p in router_ports] == [8000]  # the endpoint: public only


def test_api_key_secret_reaches_router_and_engine_pods_by_reference(minimal_spec):
    minimal_spec["router"] = {"apiKeySecret": {"name": "clients", "key": "token"}}
    built = _built(minimal_spec)
    for role in ROLES:  # an engine pod's public port serves the OpenAI API too
        assert _env(built, role)["LAMINA_API_KEY"] == {
            "secretKeyRef": {"name": "clients", "key": "token"}
        }


@pytest.mark.parametrize(
    "ref, words",
    [
        ({"name": "clients"}, "spec.router.apiKeySecret.key: Field required"),
        ({"name": "Not_A_Name", "key": "k"}, "spec.router.apiKeySecret.name: String should match"),
        ({"name": "clients", "key": "a key"}, "spec.router.apiKeySecret.key: String should match"),
    ],
)
def test_a_bad_api_key_secret_is_reported(
    cluster, reconciler, sd_factory, minimal_spec, ref, words
):
    minimal_spec["router"] = {"apiKeySecret": ref}
    sd_factory("qwen", minimal_spec)
    (problem,) = reconciler.reconcile(cluster.get(*SD, "qwen")).problems
    assert problem.reason == "InvalidSpec" and words in problem.message
    assert cluster.get("apps/v1", "Deployment", NS, "qwen-router") is None


def test_the_api_key_secret_is_never_read(cluster, reconciler, sd_factory, minimal_spec):
    minimal_spec["router"] = {"apiKeySecret": {"name": "clients", "key": "token"}}
    sd_factory("qwen", minimal_spec)
    assert reconciler.reconcile(cluster.get(*SD, "qwen")).problems == []
    assert not [c for c in cluster.calls if c[1] == "Secret" and c[2] == "clients"]


def _pass(reconciler, name="qwen"):
    return reconciler.reconcile(reconciler.client.get(*SD, name))


def _key(cluster, name="qwen"):
    secret = cluster.get("v1", "Secret", NS, f"{name}-internal")
    return base64.b64decode(secret["data"]["key"]).decode()


def _fingerprints(cluster, name="qwen"):
    out = set()
    for role in ROLES:
        template = cluster.get("apps/v1", "Deployment", NS, f"{name}-{role}")["spec"]["template"]
        out.add(template["metadata"]["annotations"].get(FINGERPRINT_ANNOTATION))
    return out


def test_the_operator_creates_the_derived_key_once(cluster, sd_factory, minimal_spec, clock):
    uid = sd_factory("qwen", minimal_spec)["metadata"]["uid"]
    reconciler = Reconciler(cluster, ListRecorder(), clock, key_seed=SEED_A)
    assert ("Created", "Secret", "qwen-internal") in [
        (a.verb, a.kind, a.name) for a in _pass(reconciler).actions
    ]
    key = _key(cluster)
    assert key == derive(SEED_A, NS, "qwen", uid)
    secret = cluster.get("v1", "Secret", NS, "qwen-internal")
    (owner,) = secret["metadata"]["ownerReferences"]
    assert owner["uid"] == uid and owner["controller"] is True  # deleted with its deployment
    assert "annotations" not in secret["metadata"]  # no last-applied copy of the key
    assert len(_fingerprints(cluster)) == 1 and None not in _fingerprints(cluster)
    # a restarted operator with the same seed: the create is refused (409), nothing changes
    again = Reconciler(cluster, ListRecorder(), clock, key_seed=SEED_A)
    before = len(cluster.writes)
    assert _pass(again).actions == [] and cluster.writes[before:] == []


def test_a_new_seed_replaces_the_key_and_rolls_every_pool(cluster, sd_factory, minimal_spec, clock):
    uid = sd_factory("qwen", minimal_spec)["metadata"]["uid"]
    _pass(Reconciler(cluster, ListRecorder(), clock, key_seed=SEED_A))
    old = _fingerprints(cluster)
    rotated = Reconciler(cluster, ListRecorder(), clock, key_seed=SEED_B)
    before = len(cluster.writes)
    actions = [(a.verb, a.kind, a.name) for a in _pass(rotated).actions]
    assert actions[:2] == [
        ("Deleted", "Secret", "qwen-internal"),
        ("Created", "Secret", "qwen-internal"),
    ]
    updated = {name for verb, kind, name in actions if (verb, kind) == ("Updated", "Deployment")}
    assert updated == {"qwen-prefill", "qwen-decode", "qwen-router"}
    # the Secret is replaced before any pool rolls to it
    writes = cluster.writes[before:]
    assert writes.index(("create", "Secret", "qwen-internal")) < writes.index(
        ("patch", "Deployment", "qwen-prefill")
    )
    assert _key(cluster) == derive(SEED_B, NS, "qwen", uid)
    assert _fingerprints(cluster) != old and len(_fingerprints(cluster)) == 1
    assert _pass(rotated).actions == []  # settled
    # the operator may do this: create and delete Secrets are what it is granted
    (secrets,) = [r for r in rbac.RULES if r["resources"] == ["secrets"]]
    assert {"create", "delete"} <= set(secrets["verbs"])


def test_without_a_seed_each_deployment_keeps_a_random_key(
    cluster, sd_factory, minimal_spec, clock
):
    uid = sd_factory("qwen", minimal_spec)["metadata"]["uid"]
    sd_factory("other", minimal_spec)
    _pass(Reconciler(cluster, ListRecorder(), clock), "qwen")
    _pass(Reconciler(cluster, ListRecorder(), clock), "other")
    key = _key(cluster)
    assert len(key) >= 43 and key != _key(cluster, "other")
    assert _fingerprints(cluster) == {None}  # nothing for a restart to compare
    # a restarted operator without a seed keeps it and rolls nothing
    before = len(cluster.writes)
    assert _pass(Reconciler(cluster, ListRecorder(), clock)).actions == []
    assert cluster.writes[before:] == [] and _key(cluster) == key
    # given a seed later, the operator replaces the random key with the derived one
    _pass(Reconciler(cluster, ListRecorder(), clock, key_seed=SEED_A))
    assert _key(cluster) == derive(SEED_A, NS, "qwen", uid)
