"""The chart's RBAC, as the API server enforces it for the operator's real ServiceAccount."""

from __future__ import annotations

import pytest
from kube import Kubectl
from setup_cluster import SYSTEM_NAMESPACE, WORK_NAMESPACE


def can(identity: Kubectl, verb: str, resource: str, namespace: str = WORK_NAMESPACE) -> bool:
    """`kubectl auth can-i`; "plural.group/sub" names a subresource (not an object name)."""
    scope = ["-n", namespace] if namespace else []
    resource, _, sub = resource.partition("/")
    if sub:
        scope.append(f"--subresource={sub}")
    answer = identity.run("auth", "can-i", verb, resource, *scope, check=False).strip()
    return answer == "yes"


@pytest.mark.parametrize(
    "verb, resource",
    [
        ("watch", "servingdeployments.lamina.dev"),
        ("patch", "servingdeployments.lamina.dev/status"),
        ("create", "deployments.apps"),
        ("delete", "deployments.apps"),
        ("create", "services"),
        ("create", "configmaps"),
        ("create", "poddisruptionbudgets.policy"),
        # The managed Redis password Secret is created and deleted; Secrets a spec names are
        # read (get) to check them (a namespaced install grants it in each watched namespace).
        ("create", "secrets"),
        ("delete", "secrets"),
        ("get", "secrets"),
        ("create", "events"),
        ("update", "servingdeployments.lamina.dev/finalizers"),
        ("patch", "kopfpeerings.kopf.dev"),
    ],
)
def test_operator_may_do_its_job_in_the_watched_namespace(operator_identity, verb, resource):
    assert can(operator_identity, verb, resource)


@pytest.mark.parametrize(
    "verb, resource, namespace",
    [
        ("delete", "pods", WORK_NAMESPACE),
        ("create", "pods", WORK_NAMESPACE),
        ("create", "rolebindings.rbac.authorization.k8s.io", WORK_NAMESPACE),
        ("update", "servingdeployments.lamina.dev/scale", WORK_NAMESPACE),
        # Secrets: never listed, watched or patched (the password Secret is create-only).
        ("list", "secrets", WORK_NAMESPACE),
        ("watch", "secrets", WORK_NAMESPACE),
        ("patch", "secrets", WORK_NAMESPACE),
        # Outside the watched namespace it can do nothing namespaced.
        ("create", "deployments.apps", "default"),
        ("get", "secrets", "kube-system"),
        ("list", "servingdeployments.lamina.dev", "default"),
        ("get", "secrets", SYSTEM_NAMESPACE),
        # A namespaced install has no cluster-wide rights.
        ("list", "namespaces", ""),
        ("list", "nodes", ""),
    ],
)
def test_operator_is_refused_everything_else(operator_identity, verb, resource, namespace):
    assert not can(operator_identity, verb, resource, namespace)
