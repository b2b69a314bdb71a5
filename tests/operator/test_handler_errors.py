"""How handlers turn failed API calls into kopf errors, and what a user sees once (not twice)."""

from __future__ import annotations

import logging

import kopf
import pytest

from lamina_operator.handlers.errors import kopf_error
from lamina_operator.handlers.policy import on_policy
from lamina_operator.handlers.serving import on_child_event, reconcile_serving
from lamina_operator.kube import KubeError

NS = "serving"
SD = ("lamina.dev/v1alpha1", "ServingDeployment", NS)
POLICY = ("lamina.dev/v1alpha1", "AutoscalingPolicy", NS)
LOG = logging.getLogger("test.handlers")


@pytest.mark.parametrize(
    ("status", "kind", "delay", "says"),
    [
        (422, kopf.PermanentError, None, "rejected a request"),
        (400, kopf.PermanentError, None, "rejected a request"),
        (403, kopf.TemporaryError, 30, "compare the operator's RBAC"),
        (401, kopf.TemporaryError, 30, "credentials were refused"),
        (0, kopf.TemporaryError, 10, "did not answer in time"),
        (503, kopf.TemporaryError, 10, "503"),
    ],
)
def test_api_failures_are_classified(status, kind, delay, says):
    error = kopf_error(KubeError(status, "boom"), "ServingDeployment x")
    assert type(error) is kind and says in str(error) and "boom" in str(error)
    if delay is not None:
        assert error.delay == delay


def test_a_rejected_child_is_a_permanent_problem_on_status(
    cluster, reconciler, sd_factory, minimal_spec, monkeypatch
):
    sd_factory("demo", minimal_spec)
    create = cluster.create

    def admission(obj):  # as a policy webhook refusing the pool Deployments would
        if obj["kind"] == "Deployment" and obj["metadata"]["name"].endswith("-decode"):
            raise KubeError(422, 'admission webhook "pods.example" denied the request: no GPU')
        return create(obj)

    monkeypatch.setattr(cluster, "create", admission)
    with pytest.raises(kopf.PermanentError, match="Rejected: the API server rejected Deployment"):
        reconcile_serving(reconciler, cluster.get(*SD, "demo"), LOG)
    degraded = {c["type"]: c for c in cluster.get(*SD, "demo")["status"]["conditions"]}["Degraded"]
    assert degraded["reason"] == "Rejected" and "no GPU" in degraded["message"]
    assert cluster.get("apps/v1", "Deployment", NS, "demo-router") is not None  # others applied


def test_policy_handler_retries_a_failed_status_write(cluster, reconciler, monkeypatch):
    def unavailable(*_, **__):
        raise KubeError(503, "etcdserver: leader changed")

    body = cluster.get(*POLICY, "latency-slo")
    monkeypatch.setattr(cluster, "patch", unavailable)
    with pytest.raises(kopf.TemporaryError, match="leader changed") as info:
        on_policy(reconciler, body, LOG)
    assert info.value.delay == 10


def test_child_event_failure_is_logged_not_raised(
    cluster, reconciler, sd_factory, minimal_spec, monkeypatch, caplog
):
    sd_factory("demo", minimal_spec)
    reconciler.reconcile(cluster.get(*SD, "demo"))
    child = cluster.get("apps/v1", "Deployment", NS, "demo-decode")
    owners = {(NS, "demo"): [cluster.get(*SD, "demo")]}

    def forbidden(*_, **__):
        raise KubeError(403, "deployments.apps is forbidden")

    monkeypatch.setattr(cluster, "list", forbidden)
    with caplog.at_level(logging.WARNING, logger=LOG.name):
        on_child_event(reconciler, "MODIFIED", child, owners, LOG)  # kopf never retries events
    assert "deployments.apps is forbidden" in caplog.text


def test_actions_are_events_and_debug_lines_never_info(
    cluster, recorder, reconciler, sd_factory, minimal_spec, caplog
):
    sd_factory("demo", minimal_spec)
    with caplog.at_level(logging.DEBUG, logger=LOG.name):
        reconcile_serving(reconciler, cluster.get(*SD, "demo"), LOG)
    created = [message for _, reason, message in recorder.events if reason == "Created"]
    assert "created Deployment demo-decode" in created
    logged = {r.getMessage(): r.levelno for r in caplog.records}
    assert logged["created Deployment demo-decode"] == logging.DEBUG
    assert not [m for m, level in logged.items() if level >= logging.INFO]
