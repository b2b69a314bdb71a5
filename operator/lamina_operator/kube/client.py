"""The small Kubernetes API surface the reconciler uses, as a protocol with two implementations:
`RestKubeClient` (real apiserver, kube/rest.py) and `MemoryKubeClient` (tests, kube/memory.py).

Objects are plain dicts in their JSON form (camelCase). Patches are JSON merge patches
(RFC 7386): dicts merge, lists and scalars replace, None deletes a key.
"""

from __future__ import annotations

import copy
from typing import Any, Protocol

# kind -> plural resource name, for every kind the operator touches. No guessing from the kind:
# "NetworkPolicy" + "s" is not a resource, and a wrong guess only shows as a 403 or 404 on a
# real API server.
PLURALS = {
    "ConfigMap": "configmaps",
    "NetworkPolicy": "networkpolicies",
    "Pod": "pods",
    "Deployment": "deployments",
    "Event": "events",
    "PodDisruptionBudget": "poddisruptionbudgets",
    "Secret": "secrets",
    "Service": "services",
    "ServingDeployment": "servingdeployments",
    "AutoscalingPolicy": "autoscalingpolicies",
}


def plural_of(kind: str) -> str:
    try:
        return PLURALS[kind]
    except KeyError:
        raise ValueError(f"no plural known for kind {kind!r}: add it to PLURALS") from None


class KubeError(Exception):
    """An API call failed; `status` is the HTTP status code (0 when none was received)."""

    def __init__(self, status: int, message: str):
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


class NotFound(KubeError):
    def __init__(self, message: str):
        super().__init__(404, message)


class AlreadyExists(KubeError):
    def __init__(self, message: str):
        super().__init__(409, message)


class KubeClient(Protocol):
    """What the reconciler needs from the API server. Namespaced objects only."""

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict | None:
        """The object, or None when it does not exist."""

    def list(
        self, api_version: str, kind: str, namespace: str, labels: dict[str, str]
    ) -> list[dict]:
        """Objects of a kind in a namespace whose labels include `labels`."""

    def create(self, obj: dict[str, Any]) -> dict:
        """Create; raises AlreadyExists when the name is taken."""

    def patch(
        self,
        api_version: str,
        kind: str,
        namespace: str,
        name: str,
        patch: dict[str, Any],
        subresource: str | None = None,
    ) -> dict:
        """JSON merge patch of the object (or of its `status` subresource)."""

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        """Delete; a missing object is not an error."""

    def serves(self, api_version: str) -> bool:
        """Whether the server serves this group/version (e.g. policy/v1 from 1.21 on)."""


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch, returning a new value."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def merge_diff(old: Any, new: Any) -> dict[str, Any]:
    """The merge patch that turns `old` into `new` (both dicts): keys gone from `new` -> None."""
    patch: dict[str, Any] = {}
    old = old if isinstance(old, dict) else {}
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(old.get(key), dict):
            sub = merge_diff(old[key], value)
            if sub:
                patch[key] = sub
        elif old.get(key) != value or key not in old:
            patch[key] = copy.deepcopy(value)
    for key in old:
        if key not in new:
            patch[key] = None
    return patch
