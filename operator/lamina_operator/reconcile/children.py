"""The children of one ServingDeployment as the API server has them, listed once per pass.

A pass lists each child kind once (5 calls) and reuses the result three times: apply compares
against it instead of GETting each child, prune picks from it what is no longer desired, and
status reads the pool Deployments from it. Apply records what the server answered, so status
sees the generation a patch just produced.

Only labelled objects are listed. An object with one of our names but without our label (an
orphan left by a deleted owner, or another controller's object) is found when creating it
fails with AlreadyExists: one extra GET in that rare case, none in the common one.

Secrets are not listed: the operator may create and delete them but not read them (rbac.py),
so the managed Redis password Secret is created create-only each pass (409 = there) instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..builders import Owner, child_name
from ..constants import DEPLOYMENT_LABEL
from ..kube import KubeClient

PDB_KIND = "PodDisruptionBudget"
# Kinds the operator creates. The PodDisruptionBudget is listed under the one policy version
# the build context chose (policy/v1, or policy/v1beta1 before 1.21): a server serving both
# returns the same objects through each, so listing both would see every PDB twice.
CHILD_KINDS = (
    ("v1", "ConfigMap"),
    ("v1", "Service"),
    ("apps/v1", "Deployment"),
    ("policy/v1", PDB_KIND),
    ("networking.k8s.io/v1", "NetworkPolicy"),
)


@dataclass
class Children:
    """Live children keyed by (kind, name); the apiVersion they were read through is kept."""

    objects: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def listed(cls, client: KubeClient, owner: Owner, pdb_api_version: str) -> Children:
        children = cls()
        for api_version, kind in CHILD_KINDS:
            version = pdb_api_version if kind == PDB_KIND else api_version
            found = client.list(version, kind, owner.namespace, {DEPLOYMENT_LABEL: owner.name})
            for obj in found:
                children.put(obj)
        return children

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        return self.objects.get((kind, name))

    def put(self, obj: dict[str, Any]) -> None:
        self.objects[(obj["kind"], obj["metadata"]["name"])] = obj

    def remove(self, kind: str, name: str) -> None:
        self.objects.pop((kind, name), None)

    def deployment(self, owner: Owner, role: str) -> dict[str, Any] | None:
        return self.get("Deployment", child_name(owner, role))
