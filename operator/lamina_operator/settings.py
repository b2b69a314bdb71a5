"""kopf settings, pinned at startup so state written by one version is read by the next.

- progress storage: annotations under `lamina.dev/` (never kopf's default zalando prefix), in
  kopf's current key format only (`v1=False`: no second, legacy copy of each annotation);
- diff-base storage: `lamina.dev/last-handled-configuration`, same format;
- finalizer: `lamina.dev/kopf-finalizer` (only added if a handler needs one; the children are
  removed by garbage collection through ownerReferences, so none is registered today);
- events: only the explicit ones (the reconciler's recorder, one Event per action or problem),
  reported as component `lamina-operator`; log lines are never posted as Events, whatever
  kopf's default, so nothing reaches `kubectl describe` twice;
- watches: reconnect every 10 minutes at most, so a silently dropped stream heals;
- kopf's own API calls (progress patches, events, peering): 60 s per request, 10 s to connect.
"""

from __future__ import annotations

import logging

import kopf

from .constants import FINALIZER, PEERING_NAME, PROGRESS_PREFIX

# Set by `lamina-operator run` before kopf starts: scanning lists namespaces and CRDs
# cluster-wide, which a namespaced install's Role does not (and should not) allow.
SCAN_CLUSTER = {"enabled": True}


def needs_cluster_scan(all_namespaces: bool, namespaces: list[str]) -> bool:
    """Only --all-namespaces or glob patterns need kopf to discover namespaces."""
    return all_namespaces or any(ch in ns for ns in namespaces for ch in "*?[!")


def configure(settings: kopf.OperatorSettings) -> None:
    settings.scanning.disabled = not SCAN_CLUSTER["enabled"]
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix=PROGRESS_PREFIX, v1=False
    )
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=PROGRESS_PREFIX, key="last-handled-configuration", v1=False
    )
    settings.posting.enabled = True
    settings.posting.loggers = False
    settings.posting.level = logging.INFO
    settings.posting.reporting_component = "lamina-operator"
    settings.watching.server_timeout = 600
    settings.watching.client_timeout = 660
    settings.watching.connect_timeout = 10
    settings.networking.request_timeout = 60
    settings.networking.connect_timeout = 10
    # The reconcile pass is synchronous (kubernetes client); run a few in parallel at most.
    settings.execution.max_workers = 8
    if not settings.peering.name or settings.peering.name == "default":
        settings.peering.name = PEERING_NAME
