"""The RBAC the operator needs, as data: the chart's ClusterRole/Role mirrors these rules and a
test may compare them. Each rule names the code path that needs it.

`CLUSTER_RULES` are needed only with --all-namespaces (kopf lists namespaces and CRDs, and
uses a ClusterKopfPeering); the `RULES` apply in every watched namespace (or cluster-wide).
Secrets: the operator writes two per ServingDeployment (the internal key `<name>-internal`, and
the managed Redis password), both consumed by pods through secretKeyRef, and never needs to
read one back (it derives the internal key again from its seed), so `RULES` grant create and
delete on Secrets everywhere it reconciles, but no get/list/watch/patch: the operator cannot
read a Secret it did not create. `SECRET_READ_RULES` (get) only let it check, before pods wait
on a missing mount, that the Secrets a spec names (passwordSecretRef, redis.tls) exist and hold
their keys (router.apiKeySecret is not checked: the operator never reads the API key); a namespaced install grants them in each watched namespace, but with
--all-namespaces the chart binds them only in `rbac.secretNamespaces` (RBAC has no label- or
owner-scoped grant, so the namespace is the narrowest unit). Without them the check is skipped
and the pod's own mount error says what is missing.
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
    # The internal key and managed Redis password Secrets: created once, never read back (a 409
    # means it is there; pods read it by secretKeyRef); the password is deleted with the managed
    # Redis when that is turned off, the internal key replaced when the operator's seed changed.
    # Garbage collection removes them with their ServingDeployment (ownerReference).
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create", "delete"]},
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


# Only in namespaces granted them (see the module docstring): the Secrets a spec names
# (engine.kvTransfer.redis.passwordSecretRef, redis.tls.secretName) are read (get) to check
# they exist and hold their keys. Where this is not granted the check is skipped.
SECRET_READ_RULES: list[dict[str, list[str]]] = [
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]},
]


def all_rules(clusterwide: bool = True) -> list[dict[str, list[str]]]:
    """Everything the operator needs where it reconciles: a namespaced install's Role
    (clusterwide False), or with --all-namespaces its ClusterRole plus SECRET_READ_RULES."""
    return RULES + SECRET_READ_RULES + (CLUSTER_RULES if clusterwide else [])


def cluster_role_rules() -> list[dict[str, list[str]]]:
    """The ClusterRole of an --all-namespaces install: all but reading Secrets (per namespace)."""
    return RULES + CLUSTER_RULES
