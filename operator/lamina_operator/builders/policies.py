"""Ingress NetworkPolicies of a ServingDeployment, one per pool (`<name>-<role>`).

Every Lamina pod has a public port 8000 (the OpenAI API, /health, /metrics) and an internal
port 8001 (the router's calls to engine pods, KV aborts, load reports, drain; each call needs
the deployment's internal key). Each pool's policy has one rule per port:
- internal 8001, every pool: from this deployment's router, prefill and decode pods, and the
  Lamina operator's pods (label lamina.dev/operator=true) in the operator's namespace, known
  from LAMINA_OPERATOR_NAMESPACE (the chart sets it; without it, any namespace: then any pod
  carrying that label gets in, and still needs the key).
- router, public 8000: from anyone, or, when `clientsFrom` is set, from those clients plus the
  readers of its /metrics (below): the SLO alerts and the autoscaler's TTFT/TBT come from the
  router, so restricting clients must not cut them off.
- prefill, decode, public 8000: from this deployment's router only (an engine pod's OpenAI API
  is not an entrance), plus the readers of /metrics: `monitoringFrom` (Prometheus) and, when
  autoscaling is on, the operator's pods.
- redis (managed): port 6379 from this deployment's prefill and decode pods only; the router
  never talks to Redis.
Only Ingress is isolated: engines still reach DNS, the API of a model store, and an external
Redis. Kubelet probes (GET /health on 8000) come from the node, which CNIs that enforce
NetworkPolicy allow.
"""

from __future__ import annotations

from typing import Any

from ..api import ServingDeploymentSpec
from ..constants import (
    DEPLOYMENT_LABEL,
    ENGINE_PORT,
    INTERNAL_PORT,
    OPERATOR_POD_LABEL,
    REDIS_PORT,
    ROLE_LABEL,
)
from .names import Owner, child_name, metadata, selector_labels

ENGINE_ROLES = ("prefill", "decode")
POOL_ROLES = ("router", *ENGINE_ROLES)
# Who may open connections to each component's public port (or Redis's), by role, within one
# deployment; the router's public port takes clients. Every pool's internal port: POOL_ROLES.
PEERS = {
    "prefill": ("router",),
    "decode": ("router",),
    "redis": ENGINE_ROLES,
}


# Set by the API server on every namespace since Kubernetes 1.21.
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"


def operator_peer(namespace: str | None) -> dict[str, Any]:
    """The operator's pods: in `namespace`, or (unknown) in any namespace."""
    where = {"matchLabels": {NAMESPACE_NAME_LABEL: namespace}} if namespace else {}
    return {
        "namespaceSelector": where,
        "podSelector": {"matchLabels": {OPERATOR_POD_LABEL: "true"}},
    }


def _pods_of(owner: Owner, roles: tuple[str, ...]) -> dict[str, Any]:
    """A peer matching this deployment's pods of `roles` (in its own namespace)."""
    return {
        "podSelector": {
            "matchLabels": {DEPLOYMENT_LABEL: owner.name},
            "matchExpressions": [{"key": ROLE_LABEL, "operator": "In", "values": list(roles)}],
        }
    }


def _policy(owner: Owner, component: str, rules: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(owner, child_name(owner, component), "network-policy", component),
        "spec": {
            "podSelector": {"matchLabels": selector_labels(owner, component)},
            "policyTypes": ["Ingress"],
            "ingress": rules,
        },
    }


def build_network_policy(
    owner: Owner, spec: ServingDeploymentSpec, role: str, operator_namespace: str | None = None
) -> dict[str, Any]:
    """The policy of one pool: router, prefill, decode or redis."""
    net = spec.network_policy
    port = REDIS_PORT if role == "redis" else ENGINE_PORT
    rule: dict[str, Any] = {"ports": [{"protocol": "TCP", "port": port}]}
    if role == "router":
        if net.clients_from:  # no `from` at all admits every source
            rule["from"] = [peer.manifest() for peer in net.clients_from]
            rule["from"] += _metrics_readers(spec, operator_namespace)
    else:
        rule["from"] = [_pods_of(owner, PEERS[role])]
        if role in ENGINE_ROLES:
            rule["from"] += _metrics_readers(spec, operator_namespace)
    if role == "redis":
        return _policy(owner, role, [rule])
    internal = {
        "ports": [{"protocol": "TCP", "port": INTERNAL_PORT}],
        "from": [_pods_of(owner, POOL_ROLES), operator_peer(operator_namespace)],
    }
    return _policy(owner, role, [rule, internal])


def _metrics_readers(
    spec: ServingDeploymentSpec, operator_namespace: str | None
) -> list[dict[str, Any]]:
    """Peers that read /metrics: monitoringFrom, and the operator when it autoscales."""
    peers = [peer.manifest() for peer in spec.network_policy.monitoring_from]
    auto = spec.autoscaling
    if auto is not None and auto.enabled:
        peers.append(operator_peer(operator_namespace))
    return peers


def build_network_policies(
    owner: Owner, spec: ServingDeploymentSpec, operator_namespace: str | None = None
) -> list[dict[str, Any]]:
    """Every policy the spec wants: none when networkPolicy.enabled is false."""
    if not spec.network_policy.enabled:
        return []
    roles = list(POOL_ROLES)
    if spec.engine.kv_transfer.managed_redis:
        roles.append("redis")
    return [build_network_policy(owner, spec, role, operator_namespace) for role in roles]
