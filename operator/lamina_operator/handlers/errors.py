"""A failed Kubernetes API call, as the kopf error that says whether retrying can help.

- 400/422: the API server rejected what the operator sent (a status it cannot store, a body an
  admission webhook refuses). The same request fails again, so kopf.PermanentError: the next
  change of the object is tried afresh. (A child manifest the server rejects is reported
  earlier, as a `Rejected` problem on the ServingDeployment's status.)
- 401/403: credentials or RBAC. An administrator fixes these without touching the object, so
  kopf.TemporaryError, with a hint where to look and a longer delay.
- anything else (0 = no answer, 404 of a discovery path, 409, 429, 5xx): transient,
  kopf.TemporaryError after a short delay.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import kopf

from ..kube import KubeError

RETRY_DELAY_SECONDS = 30  # problems a person fixes (a Secret, RBAC)
TRANSIENT_DELAY_SECONDS = 10  # problems the API server gets over by itself

# The operator creates (and deletes) the managed Redis password Secret wherever it reconciles;
# reading Secrets is optional (rbac.py), so a 403 here is a create or delete the RBAC lacks.
SECRETS_HINT = (
    " (compare the operator's RBAC with lamina_operator.rbac: it needs create and delete on "
    "secrets in every namespace it reconciles, for the managed Redis password; the chart's "
    "ClusterRole or Role grants them: reinstall or upgrade the chart with rbac.create=true)"
)
_HINTS = {
    401: " (the operator's credentials were refused: check its ServiceAccount token)",
    403: " (compare the operator's RBAC with lamina_operator.rbac)",
    0: " (the API server did not answer in time: is it overloaded or unreachable?)",
}


def kopf_error(exc: KubeError, what: str) -> kopf.PermanentError | kopf.TemporaryError:
    if exc.status in (400, 422):
        return kopf.PermanentError(
            f"{what}: the API server rejected a request: {exc.message}. Nothing is retried "
            "until the object changes."
        )
    delay = RETRY_DELAY_SECONDS if exc.status in (401, 403) else TRANSIENT_DELAY_SECONDS
    hint = _HINTS.get(exc.status, "")
    if exc.status == 403 and "secrets" in exc.message:
        hint = SECRETS_HINT
    return kopf.TemporaryError(f"{what}: Kubernetes API call failed: {exc}{hint}", delay=delay)


@contextmanager
def kube_errors(what: str) -> Iterator[None]:
    """Raise the kopf error for a KubeError escaping the block (`what` names the work)."""
    try:
        yield
    except KubeError as exc:
        raise kopf_error(exc, what) from exc
