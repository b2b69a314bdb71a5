"""Kubernetes hardening of a ServingDeployment's children: who may reach which pod, default
resources, Redis limits and TLS, who gets the Redis password, what is refused at admission."""

from __future__ import annotations

import kubernetes_validate
import pytest
from pydantic import ValidationError

from lamina_operator.api import ServingDeploymentSpec
from lamina_operator.builders import BuildContext, Owner, build_children

OWNER = Owner(name="qwen", namespace="serving", uid="0000-1111")


def _children(spec_dict):
    spec = ServingDeploymentSpec.model_validate(spec_dict)
    built = build_children(OWNER, spec, BuildContext(redis_password="pw-fixed"))
    return {(d.manifest["kind"], d.manifest["metadata"]["name"]): d.manifest for d in built}


def _policies(spec_dict):
    return {name: m for (kind, name), m in _children(spec_dict).items() if kind == "NetworkPolicy"}


def _sources(policy):
    """(ports, from-peers) of a policy's single ingress rule."""
    (rule,) = policy["spec"]["ingress"]
    return [p["port"] for p in rule["ports"]], rule.get("from")


def _roles_allowed(peer):
    """Roles a `_pods_of` peer admits, after checking it is scoped to this deployment."""
    selector = peer["podSelector"]
    assert selector["matchLabels"] == {"lamina.dev/deployment": "qwen"}
    assert "namespaceSelector" not in peer  # own namespace only
    (expr,) = selector["matchExpressions"]
    assert expr["key"] == "lamina.dev/role" and expr["operator"] == "In"
    return set(expr["values"])


def test_each_pool_gets_an_ingress_policy(minimal_spec):
    policies = _policies(minimal_spec)
    assert set(policies) == {"qwen-router", "qwen-prefill", "qwen-decode", "qwen-redis"}
    for name, policy in policies.items():
        role = name.removeprefix("qwen-")
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        # selects exactly the pods of its pool (the Deployment's own selector)
        assert policy["spec"]["podSelector"] == {
            "matchLabels": {"lamina.dev/deployment": "qwen", "lamina.dev/role": role}
        }
        kubernetes_validate.validate(policy, "1.25", strict=True)


def test_router_takes_clients_engines_take_only_lamina_pods(minimal_spec):
    policies = _policies(minimal_spec)
    ports, sources = _sources(policies["qwen-router"])
    assert ports == [8000] and sources is None  # no `from`: every client
    for engine in ("qwen-prefill", "qwen-decode"):
        ports, sources = _sources(policies[engine])
        assert ports == [8000]
        (peer,) = sources
        assert _roles_allowed(peer) == {"router", "prefill", "decode"}
    ports, sources = _sources(policies["qwen-redis"])
    (peer,) = sources
    assert ports == [6379]
    assert _roles_allowed(peer) == {"prefill", "decode"}  # not the router: it never uses Redis


def test_clients_and_monitoring_peers(minimal_spec):
    prometheus = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "mon"}}}
    office = {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.9.0.0/16"]}}
    minimal_spec["networkPolicy"] = {"clientsFrom": [office], "monitoringFrom": [prometheus]}
    policies = _policies(minimal_spec)
    assert _sources(policies["qwen-router"])[1] == [office]
    for engine in ("qwen-prefill", "qwen-decode"):
        assert _sources(policies[engine])[1][1:] == [prometheus]
    assert len(_sources(policies["qwen-redis"])[1]) == 1  # Prometheus never reaches Redis
    for policy in policies.values():
        kubernetes_validate.validate(policy, "1.25", strict=True)


def test_policies_can_be_turned_off_and_follow_managed_redis(minimal_spec, gpu_spec):
    assert "qwen-redis" not in _policies(gpu_spec)  # external Redis: nothing of ours to guard
    minimal_spec["networkPolicy"] = {"enabled": False}
    assert _policies(minimal_spec) == {}


@pytest.mark.parametrize(
    "peer, words",
    [
        ({}, "would match nothing"),
        ({"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}, "not both"),
    ],
)
def test_bad_network_peers_are_refused(minimal_spec, peer, words):
    minimal_spec["networkPolicy"] = {"clientsFrom": [peer]}
    with pytest.raises(ValidationError, match=words):
        ServingDeploymentSpec.model_validate(minimal_spec)
