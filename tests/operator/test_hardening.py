"""Kubernetes hardening of a ServingDeployment's children: who may reach which pod, default
resources, what is refused at admission, RBAC hints, examples (Redis: test_redis_hardening.py)."""

from __future__ import annotations

import kubernetes_validate
import pytest
from pydantic import ValidationError

from lamina_operator.api import ServingDeploymentSpec
from lamina_operator.builders import BuildContext, Owner, build_children

OWNER = Owner(name="qwen", namespace="serving", uid="0000-1111")


def _children(spec_dict, operator_namespace=None):
    spec = ServingDeploymentSpec.model_validate(spec_dict)
    ctx = BuildContext(redis_password="pw-fixed", operator_namespace=operator_namespace)
    built = build_children(OWNER, spec, ctx)
    return {(d.manifest["kind"], d.manifest["metadata"]["name"]): d.manifest for d in built}


def _policies(spec_dict, operator_namespace=None):
    children = _children(spec_dict, operator_namespace)
    return {name: m for (kind, name), m in children.items() if kind == "NetworkPolicy"}


def _sources(policy, port=8000):
    """(ports, from-peers) of a policy's rule for `port` (public 8000, internal 8001, 6379)."""
    (rule,) = [r for r in policy["spec"]["ingress"] if r["ports"][0]["port"] == port]
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


ANY_OPERATOR = {
    "namespaceSelector": {},
    "podSelector": {"matchLabels": {"lamina.dev/operator": "true"}},
}


def test_router_takes_clients_engines_take_only_lamina_pods(minimal_spec):
    policies = _policies(minimal_spec)
    ports, sources = _sources(policies["qwen-router"])
    assert ports == [8000] and sources is None  # no `from`: every client
    for engine in ("qwen-prefill", "qwen-decode"):
        ports, sources = _sources(policies[engine])
        assert ports == [8000]
        (peer,) = sources
        assert _roles_allowed(peer) == {"router"}  # an engine's OpenAI API is no entrance
    for pool in ("qwen-router", "qwen-prefill", "qwen-decode"):
        # two rules: public and internal, nothing else
        assert sorted(r["ports"][0]["port"] for r in policies[pool]["spec"]["ingress"]) == [
            8000,
            8001,
        ]
        ports, (pods, operator) = _sources(policies[pool], 8001)
        assert ports == [8001]
        assert _roles_allowed(pods) == {"router", "prefill", "decode"}
        assert operator == ANY_OPERATOR  # drain: the operator, with or without autoscaling
    ports, sources = _sources(policies["qwen-redis"], 6379)
    (peer,) = sources
    assert ports == [6379]
    assert _roles_allowed(peer) == {"prefill", "decode"}  # not the router: it never uses Redis


def test_clients_and_monitoring_peers(minimal_spec):
    prometheus = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "mon"}}}
    office = {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.9.0.0/16"]}}
    minimal_spec["networkPolicy"] = {"clientsFrom": [office], "monitoringFrom": [prometheus]}
    policies = _policies(minimal_spec)
    # the router's SLO metrics stay readable when its clients are restricted
    assert _sources(policies["qwen-router"])[1] == [office, prometheus]
    for engine in ("qwen-prefill", "qwen-decode"):
        assert _sources(policies[engine])[1][1:] == [prometheus]
        # monitoring reads /metrics on the public port, never the internal one
        assert prometheus not in _sources(policies[engine], 8001)[1]
    assert prometheus not in _sources(policies["qwen-router"], 8001)[1]
    assert len(_sources(policies["qwen-redis"], 6379)[1]) == 1  # Prometheus never reaches Redis
    for policy in policies.values():
        kubernetes_validate.validate(policy, "1.25", strict=True)


def test_with_autoscaling_the_operator_may_read_engine_metrics(minimal_spec, gpu_spec):
    operator = {
        "namespaceSelector": {},
        "podSelector": {"matchLabels": {"lamina.dev/operator": "true"}},
    }
    for engine in ("qwen-prefill", "qwen-decode"):
        assert operator in _sources(_policies(gpu_spec)[engine])[1]  # autoscaling.policyRef
        assert operator not in _sources(_policies(minimal_spec)[engine])[1]  # no autoscaler
    assert _sources(_policies(gpu_spec)["qwen-router"])[1] is None  # clients: anyone
    # restricted clients: the operator still reads the router's TTFT/TBT
    office = {"ipBlock": {"cidr": "10.0.0.0/8"}}
    gpu_spec["networkPolicy"] = {"clientsFrom": [office]}
    assert _sources(_policies(gpu_spec)["qwen-router"])[1] == [office, operator]
    gpu_spec["autoscaling"]["enabled"] = False
    assert _sources(_policies(gpu_spec)["qwen-router"])[1] == [office]
    assert operator not in _sources(_policies(gpu_spec)["qwen-decode"])[1]


def test_the_operator_is_admitted_from_its_own_namespace_only(gpu_spec):
    policies = _policies(gpu_spec, operator_namespace="lamina-system")
    operator = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "lamina-system"}},
        "podSelector": {"matchLabels": {"lamina.dev/operator": "true"}},
    }
    for engine in ("qwen-prefill", "qwen-decode"):
        for port in (8000, 8001):
            peers = _sources(policies[engine], port)[1]
            assert operator in peers
            # no peer admits labelled pods from every namespace
            assert all(p.get("namespaceSelector") != {} for p in peers)
        kubernetes_validate.validate(policies[engine], "1.25", strict=True)
    assert operator in _sources(policies["qwen-router"], 8001)[1]


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


def _container(children, name):
    return children[("Deployment", name)]["spec"]["template"]["spec"]["containers"][0]


def test_pods_without_resources_get_burstable_defaults(minimal_spec):
    built = _children(minimal_spec)
    for role in ("prefill", "decode"):
        assert _container(built, f"qwen-{role}")["resources"] == {
            "requests": {"cpu": "500m", "memory": "2Gi"},
            "limits": {"memory": "64Gi"},  # no CPU limit: throttling stalls decode steps
        }
    assert _container(built, "qwen-router")["resources"] == {
        "requests": {"cpu": "250m", "memory": "512Mi"},
        "limits": {"memory": "8Gi"},
    }


def test_a_resource_the_user_names_is_left_as_written(gpu_spec):
    built = _children(gpu_spec)
    # prefill names cpu and memory (requests only): no default limit may undercut them
    assert _container(built, "qwen-prefill")["resources"] == {
        "requests": {"cpu": "8", "memory": "64Gi"},
        "limits": {"nvidia.com/gpu": "1"},
    }
    # decode names only the GPU: cpu and memory still get defaults
    assert _container(built, "qwen-decode")["resources"] == {
        "requests": {"cpu": "500m", "memory": "2Gi"},
        "limits": {"nvidia.com/gpu": "1", "memory": "64Gi"},
    }


@pytest.mark.parametrize(
    "kv, words",
    [
        ({"backend": "nixl"}, "nixl is not supported yet"),
        ({"redis": {"url": "redis://r:6379/0", "tls": {"secretName": "ca"}}}, "plain redis://"),
        ({"redis": {"url": "rediss://r:6379/0?ssl_ca_certs=/x"}}, "redis.tls.secretName"),
        ({"redis": {"memory": "1Mi"}}, "below 64Mi"),
        ({"redis": {"memory": "lots"}}, "should match pattern"),
    ],
)
def test_admission_refuses_what_would_fail_later(minimal_spec, kv, words):
    minimal_spec["engine"] = {"kvTransfer": kv}
    with pytest.raises(ValidationError, match=words):
        ServingDeploymentSpec.model_validate(minimal_spec)


def test_nixl_is_reported_as_invalid_spec(cluster, reconciler, sd_factory, minimal_spec):
    minimal_spec["engine"] = {"kvTransfer": {"backend": "nixl"}}
    sd_factory("qwen", minimal_spec)
    body = cluster.get("lamina.dev/v1alpha1", "ServingDeployment", "serving", "qwen")
    outcome = reconciler.reconcile(body)
    (problem,) = outcome.problems
    assert problem.reason == "InvalidSpec" and not problem.retryable
    assert "nixl is not supported yet" in problem.message
    degraded = {c["type"]: c for c in outcome.status["conditions"]}["Degraded"]
    assert degraded["status"] == "True" and "use backend: redis" in degraded["message"]
    assert cluster.get("apps/v1", "Deployment", "serving", "qwen-decode") is None


def test_a_forbidden_secret_says_which_rights_are_missing():
    from lamina_operator.handlers.errors import kopf_error
    from lamina_operator.kube import KubeError

    message = (
        'secrets is forbidden: User "system:serviceaccount:lamina-system:lamina" cannot create '
        'resource "secrets" in API group "" in the namespace "serving"'
    )
    error = kopf_error(KubeError(403, message), "reconciling serving/qwen")
    assert "create and delete on secrets" in str(error) and "rbac.create" in str(error)
    other = kopf_error(KubeError(403, "deployments.apps is forbidden"), "reconciling x")
    assert "secrets" not in str(other)


def test_examples_pass_admission_and_ask_for_one_gpu_per_pod():
    """The engine uses one device per pod: an example asking for two would waste one."""
    from pathlib import Path

    import yaml

    manifests = Path(__file__).resolve().parents[2] / "manifests"
    seen = 0
    for path in sorted(manifests.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc.get("kind") != "ServingDeployment":
                continue
            spec = ServingDeploymentSpec.model_validate(doc["spec"])
            for pool in (spec.prefill, spec.decode, spec.router):
                gpus = pool.resources.limits.get("nvidia.com/gpu", 0)
                assert int(gpus) <= 1, f"{path.name}: {gpus} GPUs in one pod"
            seen += 1
    assert seen >= 3
