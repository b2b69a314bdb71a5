"""The RBAC the operator needs, as data: the chart's ClusterRole/Role mirrors these rules and a
test may compare them. Each rule names the code path that needs it.

`CLUSTER_RULES` are needed only with --all-namespaces (kopf lists namespaces and CRDs, and
uses a ClusterKopfPeering); the `RULES` apply in every watched namespace (or cluster-wide).
`SECRET_RULES` are kept apart: a namespaced install grants them in each watched namespace, but
with --all-namespaces the chart binds them only in the namespaces an administrator lists
(`rbac.secretNamespaces`), so the operator cannot read every Secret in the cluster. RBAC has
no label- or owner-scoped grant, and resourceNames cannot name Secrets of ServingDeployments
not yet created, so the namespace is the narrowest unit that works.
"""

from __future__ import annotations

RULES: list[dict[str, list[str]]] = [
    # kopf watches the custom resources and patches its progress annotations on them.
    {
        "apiGroups": ["lamina.dev"],
        "resources": ["servingdeployments", "autoscalingpolicies"],
        "verbs": ["get", "list", "watch", "patch"],
    },
    # Reconciler._write_status / reconcile_policy patch the status subresource.
    {
        "apiGroups": ["lamina.dev"],
        "resources": ["servingdeployments/status", "autoscalingpolicies/status"],
        "verbs": ["get", "patch", "update"],
    },
    # ownerReferences with blockOwnerDeletion need update on the owner's finalizers
    # (OwnerReferencesPermissionEnforcement admission plugin).
    {
        "apiGroups": ["lamina.dev"],
        "resources": ["servingdeployments/finalizers"],
        "verbs": ["update"],
    },
    # Pools and the managed Redis: each pass lists them once (apply, prune, status), creates
    # and patches; get only when a create collides with an unlabelled object; kopf watch.
    {
        "apiGroups": ["apps"],
        "resources": ["deployments"],
        "verbs": ["get", "list", "watch", "create", "patch", "delete"],
    },
    # Services and the engine ConfigMap, pruned when no longer desired.
    {
        "apiGroups": [""],
        "resources": ["services", "configmaps"],
        "verbs": ["get", "list", "create", "patch", "delete"],
    },
    {
        "apiGroups": ["policy"],
        "resources": ["poddisruptionbudgets"],
        "verbs": ["get", "list", "create", "patch", "delete"],
    },
    # The Ingress NetworkPolicy of each pool (builders/policies.py): listed, applied, pruned.
    {
        "apiGroups": ["networking.k8s.io"],
        "resources": ["networkpolicies"],
        "verbs": ["get", "list", "create", "patch", "delete"],
    },
    # The autoscaler finds the ready pool pods (their IPs) to read their /metrics, and sets
    # their pod-deletion-cost before a scale-in.
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "patch"]},
    # Events about what the operator did (kopf posts core/v1 Events).
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
    {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
    # Leader election with --namespace: a KopfPeering in each watched namespace (read at
    # startup too: without one, and without --peering, the operator runs standalone).
    {
        "apiGroups": ["kopf.dev"],
        "resources": ["kopfpeerings"],
        "verbs": ["get", "list", "watch", "patch"],
    },
]

CLUSTER_RULES: list[dict[str, list[str]]] = [
    # kopf checks which CRDs exist (and whether peering is installed).
    {
        "apiGroups": ["apiextensions.k8s.io"],
        "resources": ["customresourcedefinitions"],
        "verbs": ["get", "list", "watch"],
    },
    # kopf follows namespaces when started with --all-namespaces or namespace patterns.
    {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list", "watch"]},
    # Leader election with --all-namespaces.
    {
        "apiGroups": ["kopf.dev"],
        "resources": ["clusterkopfpeerings"],
        "verbs": ["get", "list", "watch", "patch"],
    },
]


# Only in namespaces granted them (see the module docstring). Each pass lists the labelled
# Secrets once; the managed Redis password Secret is created once, adopted (patch) when found
# unlabelled, pruned when managed Redis is turned off; a spec's passwordSecretRef is read (get)
# to check it exists and holds the key.
SECRET_RULES: list[dict[str, list[str]]] = [
    {
        "apiGroups": [""],
        "resources": ["secrets"],
        "verbs": ["get", "list", "create", "patch", "delete"],
    },
]


def all_rules(clusterwide: bool = True) -> list[dict[str, list[str]]]:
    """Everything the operator needs where it reconciles: a namespaced install's Role
    (clusterwide False), or with --all-namespaces its ClusterRole plus SECRET_RULES."""
    return RULES + SECRET_RULES + (CLUSTER_RULES if clusterwide else [])


def cluster_role_rules() -> list[dict[str, list[str]]]:
    """The ClusterRole of an --all-namespaces install: all but Secrets (granted per namespace)."""
    return RULES + CLUSTER_RULES
