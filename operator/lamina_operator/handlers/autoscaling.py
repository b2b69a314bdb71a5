"""Handler body of the autoscaler's kopf timer (the decorator lives in lamina_operator.main).

The timer fires every TICK_SECONDS for each ServingDeployment; the Autoscaler acts only when
the policy's evaluationIntervalSeconds have passed, so a policy's interval (5 s and up) can
change without re-registering anything.
"""

from __future__ import annotations

from typing import Any

from ..autoscaling.autoscaler import Autoscaler
from .errors import kube_errors

TICK_SECONDS = 5  # the smallest evaluationIntervalSeconds a policy may set


def autoscale(autoscaler: Autoscaler, namespace: str, name: str, logger: Any) -> None:
    with kube_errors(f"autoscaling {namespace}/{name}"):
        decision = autoscaler.evaluate(namespace, name)
    if decision is not None and decision.changed:
        logger.info(f"autoscaler: {decision.reason}: {decision.message()}")
