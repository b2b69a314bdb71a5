"""Handler bodies for AutoscalingPolicies: validate, report, and re-reconcile referrers."""

from __future__ import annotations

from typing import Any

import kopf

from ..reconcile import Reconciler, reconcile_policy, referencing_deployments


def on_policy(reconciler: Reconciler, namespace: str, name: str, logger: Any) -> None:
    error = reconcile_policy(reconciler.client, namespace, name, reconciler.clock())
    # ServingDeployments waiting on this policy (PolicyNotFound/InvalidPolicy) converge now.
    for sd in referencing_deployments(reconciler.client, namespace, name):
        reconciler.reconcile(namespace, sd)
    if error is not None:
        raise kopf.PermanentError(f"AutoscalingPolicy {name} is invalid: {error}")
