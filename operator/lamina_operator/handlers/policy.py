"""Handler bodies for AutoscalingPolicies: validate, report, and re-reconcile referrers."""

from __future__ import annotations

from typing import Any

import kopf

from ..reconcile import Reconciler, reconcile_policy, referencing_deployments


def on_policy(reconciler: Reconciler, body: dict[str, Any], logger: Any) -> None:
    meta = body["metadata"]
    error = reconcile_policy(reconciler.client, body, reconciler.clock())
    # ServingDeployments waiting on this policy (PolicyNotFound/InvalidPolicy) converge now.
    for sd in referencing_deployments(reconciler.client, meta["namespace"], meta["name"]):
        reconciler.reconcile(sd)
    if error is not None:
        raise kopf.PermanentError(f"AutoscalingPolicy {meta['name']} is invalid: {error}")
