"""Handler bodies for AutoscalingPolicies: validate, report, and re-reconcile referrers."""

from __future__ import annotations

from typing import Any

import kopf

from ..reconcile import Reconciler, reconcile_policy, referencing_deployments
from .errors import kube_errors


def on_policy(reconciler: Reconciler, body: dict[str, Any], logger: Any) -> None:
    meta = body["metadata"]
    with kube_errors(f"AutoscalingPolicy {meta['name']}"):
        error = reconcile_policy(reconciler.client, body, reconciler.clock())
        # ServingDeployments waiting on this policy (PolicyNotFound/InvalidPolicy) converge now;
        # their own problems are theirs to report (status, Warning Events, their handler).
        for sd in referencing_deployments(reconciler.client, meta["namespace"], meta["name"]):
            reconciler.reconcile(sd)
    if error is not None:
        raise kopf.PermanentError(f"AutoscalingPolicy {meta['name']} is invalid: {error}")
