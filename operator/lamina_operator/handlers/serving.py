"""Handler bodies for ServingDeployments and the Deployments they own.

They only translate between kopf and the Reconciler: spec problems the user must fix become
kopf.PermanentError (no retry until the spec changes), problems the world may fix later (a
Secret or policy created afterwards) become kopf.TemporaryError with a delay, and failed API
calls are classified in handlers/errors.py.

What the operator did reaches a user once: as an Event on the ServingDeployment (posted by the
reconciler's recorder), while the log has it at DEBUG only. Problems are Warning Events (once
per distinct problem) and kopf's own retry log lines.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import kopf

from ..constants import DEPLOYMENT_LABEL, MANAGED_BY
from ..kube import KubeError
from ..reconcile import Reconciler
from .errors import RETRY_DELAY_SECONDS, kube_errors


class KopfRecorder:
    """EventRecorder posting through kopf (batched, rate-limited, with kopf's RBAC)."""

    def event(self, obj: dict[str, Any], type: str, reason: str, message: str) -> None:
        kopf.event(obj, type=type, reason=reason, message=message[:1000])


def reconcile_serving(reconciler: Reconciler, body: dict[str, Any], logger: Any) -> None:
    with kube_errors(f"ServingDeployment {body['metadata']['name']}"):
        outcome = reconciler.reconcile(body)
    for action in outcome.actions:  # posted as an Event by the recorder already
        logger.debug(action.describe())
    if not outcome.problems:
        return
    message = "; ".join(f"{p.reason}: {p.message}" for p in outcome.problems)
    if outcome.retryable:
        raise kopf.TemporaryError(message, delay=RETRY_DELAY_SECONDS)
    raise kopf.PermanentError(message)


def on_child_event(
    reconciler: Reconciler,
    event_type: str | None,
    child: dict[str, Any],
    owners: Mapping[tuple[str, str], Iterable[dict[str, Any]]],
    logger: logging.Logger,
) -> None:
    """An owned Deployment changed: refresh the owner's status from its pools (one list call).

    `owners` is kopf's index of ServingDeployment bodies by (namespace, name), so the owner is
    never fetched. A deleted child gets a full pass, which recreates it. kopf does not retry
    event handlers, so a failed API call is only logged: the owner's next pass catches up.
    """
    meta = child.get("metadata", {})
    labels = meta.get("labels") or {}
    owner = labels.get(DEPLOYMENT_LABEL)
    if owner is None or labels.get("app.kubernetes.io/managed-by") != MANAGED_BY:
        return
    body = next(iter(owners.get((meta["namespace"], owner), ())), None)
    if body is None:  # the owner is gone: garbage collection removes the rest
        return
    try:
        if event_type == "DELETED":
            outcome = reconciler.reconcile(body)
        else:
            outcome = reconciler.refresh_status(body)
    except KubeError as exc:
        logger.warning(f"{owner}: refreshing after a change of {meta.get('name')} failed: {exc}")
        return
    for action in outcome.actions:
        logger.debug(action.describe())
    if outcome.problems:  # already reported on the owner; the owner's handler retries
        logger.debug(f"{owner}: {len(outcome.problems)} problem(s) pending")
