"""Names and labels of every child of a ServingDeployment, and its owner reference.

Names are `<deployment>-<suffix>`; labels follow app.kubernetes.io/* plus lamina.dev/deployment
and lamina.dev/role, and the selector of each pool uses only the last two (they never change).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..constants import (
    API_VERSION,
    DEPLOYMENT_LABEL,
    MANAGED_BY,
    PART_OF,
    ROLE_LABEL,
    SERVING_KIND,
)


@dataclass(frozen=True)
class Owner:
    """The ServingDeployment a child belongs to."""

    name: str
    namespace: str
    uid: str

    def reference(self) -> dict[str, Any]:
        """Controller ownerReference: deleting the owner garbage-collects the child."""
        return {
            "apiVersion": API_VERSION,
            "kind": SERVING_KIND,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


def child_name(owner: Owner, suffix: str) -> str:
    """`<deployment>-prefill`, `-decode`, `-router`, `-engine`, `-redis`, `-redis-auth`,
    `-internal`."""
    return f"{owner.name}-{suffix}"


def config_map_name(owner: Owner) -> str:
    return child_name(owner, "engine")


def redis_secret_name(owner: Owner) -> str:
    return child_name(owner, "redis-auth")


def internal_secret_name(owner: Owner) -> str:
    """Secret holding the deployment's internal key (builders/internal_key.py), key `key`."""
    return child_name(owner, "internal")


def service_host(owner: Owner, suffix: str) -> str:
    """In-cluster DNS name of a child Service."""
    return f"{child_name(owner, suffix)}.{owner.namespace}.svc"


def selector_labels(owner: Owner, role: str) -> dict[str, str]:
    """Immutable Deployment selector of one pool."""
    return {DEPLOYMENT_LABEL: owner.name, ROLE_LABEL: role}


def labels(owner: Owner, component: str, role: str | None = None) -> dict[str, str]:
    """Labels of a child (role only for objects that belong to one pool)."""
    out = {
        "app.kubernetes.io/name": "lamina",
        "app.kubernetes.io/instance": owner.name,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": PART_OF,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        DEPLOYMENT_LABEL: owner.name,
    }
    if role is not None:
        out[ROLE_LABEL] = role
    return out


def metadata(owner: Owner, name: str, component: str, role: str | None = None) -> dict[str, Any]:
    """metadata of a child: name, namespace, labels, controller ownerReference."""
    return {
        "name": name,
        "namespace": owner.namespace,
        "labels": labels(owner, component, role),
        "ownerReferences": [owner.reference()],
    }
