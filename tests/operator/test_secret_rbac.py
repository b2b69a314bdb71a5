"""The reconciler under the RBAC the chart grants by default (watch.allNamespaces): Secrets may
be created and deleted everywhere but read nowhere, unless rbac.secretNamespaces grants get.

`RbacClient` refuses, with the API server's 403, every call lamina_operator.rbac does not
allow, so these tests fail if the code needs a right the chart does not give.
"""

from __future__ import annotations

import logging

from lamina_operator import rbac
from lamina_operator.kube import KubeError, MemoryKubeClient
from lamina_operator.reconcile import ListRecorder, Reconciler

NS = "serving"
SD = ("lamina.dev/v1alpha1", "ServingDeployment", NS)


def _resource(api_version: str, kind: str, subresource: str | None = None) -> tuple[str, str]:
    group = api_version.rpartition("/")[0]
    plural = kind.lower()[:-1] + "ies" if kind.endswith("y") else kind.lower() + "s"
    return group, plural + (f"/{subresource}" if subresource else "")


class RbacClient:
    """A MemoryKubeClient seen through a list of RBAC rules."""

    def __init__(self, cluster: MemoryKubeClient, rules: list[dict[str, list[str]]]):
        self.cluster = cluster
        self.rules = rules
        self.refused: list[tuple[str, str]] = []

    def _check(self, verb: str, api_version: str, kind: str, subresource: str | None = None):
        group, resource = _resource(api_version, kind, subresource)
        if not any(
            group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"]
            for r in self.rules
        ):
            self.refused.append((verb, resource))
            raise KubeError(403, f'{resource} is forbidden: cannot {verb} resource "{resource}"')

    def get(self, api_version, kind, namespace, name):
        self._check("get", api_version, kind)
        return self.cluster.get(api_version, kind, namespace, name)

    def list(self, api_version, kind, namespace, labels):
        self._check("list", api_version, kind)
        return self.cluster.list(api_version, kind, namespace, labels)

    def create(self, obj):
        self._check("create", obj["apiVersion"], obj["kind"])
        return self.cluster.create(obj)

    def patch(self, api_version, kind, namespace, name, patch, subresource=None):
        self._check("patch", api_version, kind, subresource)
        return self.cluster.patch(api_version, kind, namespace, name, patch, subresource)

    def delete(self, api_version, kind, namespace, name):
        self._check("delete", api_version, kind)
        self.cluster.delete(api_version, kind, namespace, name)

    def serves(self, api_version):
        return self.cluster.serves(api_version)


def _reconciler(cluster: MemoryKubeClient, read_secrets: bool) -> Reconciler:
    rules = rbac.cluster_role_rules() + (rbac.SECRET_READ_RULES if read_secrets else [])
    return Reconciler(RbacClient(cluster, rules), ListRecorder())


def _password(cluster: MemoryKubeClient, name: str) -> str:
    return cluster.get("v1", "Secret", NS, f"{name}-redis-auth")["data"]["password"]


def test_default_rbac_reconciles_a_managed_redis_and_keeps_its_password(
    cluster, sd_factory, minimal_spec
):
    sd_factory("demo", minimal_spec)
    reconciler = _reconciler(cluster, read_secrets=False)
    first = reconciler.reconcile(cluster.get(*SD, "demo"))
    assert first.problems == [], first.problems
    assert reconciler.client.refused == []
    for role in ("prefill", "decode", "router", "redis"):
        assert cluster.get("apps/v1", "Deployment", NS, f"demo-{role}") is not None, role
    assert ("Created", "Secret", "demo-redis-auth") in [
        (a.verb, a.kind, a.name) for a in first.actions
    ]
    password = _password(cluster, "demo")
    # Later passes (and a restarted operator) find it by a refused create and never rewrite it.
    body = cluster.get(*SD, "demo")
    cluster.calls.clear()
    again = reconciler.reconcile(body)
    assert again.problems == [] and again.actions == []
    assert [c for c in cluster.calls if c[1] == "Secret"] == [
        ("create", "Secret", "demo-internal"),
        ("create", "Secret", "demo-redis-auth"),
    ]
    assert _password(cluster, "demo") == password


def test_turning_managed_redis_off_deletes_its_password_secret(cluster, sd_factory, minimal_spec):
    sd_factory("demo", minimal_spec)
    reconciler = _reconciler(cluster, read_secrets=False)
    reconciler.reconcile(cluster.get(*SD, "demo"))
    external = {"kvTransfer": {"redis": {"url": "redis://kv:6379/0"}}}
    cluster.patch(*SD, "demo", {"spec": {"engine": external}})
    outcome = reconciler.reconcile(cluster.get(*SD, "demo"))
    assert outcome.problems == [] and reconciler.client.refused == []
    deleted = {(a.kind, a.name) for a in outcome.actions if a.verb == "Deleted"}
    assert {("Deployment", "demo-redis"), ("Secret", "demo-redis-auth")} <= deleted
    assert cluster.get("v1", "Secret", NS, "demo-redis-auth") is None


def test_a_named_secret_is_checked_only_where_it_may_be_read(cluster, sd_factory, gpu_spec, caplog):
    gpu_spec["engine"]["kvTransfer"]["redis"]["passwordSecretRef"]["name"] = "not-yet"
    sd_factory("qwen", gpu_spec)
    granted = _reconciler(cluster, read_secrets=True)
    (missing,) = granted.reconcile(cluster.get(*SD, "qwen")).problems
    assert missing.reason == "MissingSecret" and "not-yet" in missing.message
    assert cluster.get("apps/v1", "Deployment", NS, "qwen-decode") is None

    not_granted = _reconciler(cluster, read_secrets=False)
    with caplog.at_level(logging.DEBUG, logger="lamina_operator.reconcile.checks"):
        outcome = not_granted.reconcile(cluster.get(*SD, "qwen"))
    assert outcome.problems == []  # the pods will say what is missing
    assert cluster.get("apps/v1", "Deployment", NS, "qwen-decode") is not None
    assert "not checking Secret serving/not-yet" in caplog.text


def test_the_tls_secret_is_checked_only_where_it_may_be_read(
    cluster, sd_factory, minimal_spec, caplog
):
    minimal_spec["engine"] = {"kvTransfer": {"redis": {"tls": {"secretName": "kv-tls"}}}}
    sd_factory("tls", minimal_spec)
    (missing,) = _reconciler(cluster, read_secrets=True).reconcile(cluster.get(*SD, "tls")).problems
    assert missing.reason == "MissingSecret" and "redis.tls.secretName" in missing.message

    with caplog.at_level(logging.DEBUG, logger="lamina_operator.reconcile.checks"):
        outcome = _reconciler(cluster, read_secrets=False).reconcile(cluster.get(*SD, "tls"))
    assert outcome.problems == []
    assert cluster.get("apps/v1", "Deployment", NS, "tls-redis") is not None
    assert "not checking Secret serving/kv-tls" in caplog.text
