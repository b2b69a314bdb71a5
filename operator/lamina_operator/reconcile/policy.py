"""AutoscalingPolicy reconcile: validate it, report Ready, and find who references it.

The scaling loop itself comes with the autoscaling issue; here the policy is checked (rules the
schema cannot express, such as min <= max) so a bad policy is visible on the object itself.
"""

from __future__ import annotations

from typing import Any

from ..constants import API_VERSION, POLICY_KIND, SERVING_KIND
from ..kube import KubeClient
from .checks import parse_policy
from .status import with_transitions


def policy_status(body: dict[str, Any], now: str) -> tuple[dict[str, Any], str | None]:
    """(status, error message or None) for an AutoscalingPolicy body."""
    _, error = parse_policy(body.get("spec"))
    if error is None:
        cond = {"type": "Ready", "status": "True", "reason": "Accepted", "message": "valid"}
    else:
        cond = {"type": "Ready", "status": "False", "reason": "InvalidPolicy", "message": error}
    generation = body["metadata"].get("generation")
    previous = (body.get("status") or {}).get("conditions") or []
    conditions = with_transitions([cond], previous, now, generation)
    return {"observedGeneration": generation, "conditions": conditions}, error


def reconcile_policy(client: KubeClient, body: dict[str, Any], now: str) -> str | None:
    """Write the policy's status if it changed; return the validation error, if any."""
    status, error = policy_status(body, now)
    if (body.get("status") or {}) != status:
        meta = body["metadata"]
        client.patch(
            API_VERSION, POLICY_KIND, meta["namespace"], meta["name"], {"status": status}, "status"
        )
    return error


def referencing_deployments(
    client: KubeClient, namespace: str, policy: str
) -> list[dict[str, Any]]:
    """The ServingDeployments in `namespace` whose autoscaling.policyRef is `policy` (one list)."""
    found = []
    for sd in client.list(API_VERSION, SERVING_KIND, namespace, {}):
        ref = (((sd.get("spec") or {}).get("autoscaling") or {}).get("policyRef") or {}).get("name")
        if ref == policy:
            found.append(sd)
    return found
