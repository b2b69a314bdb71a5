"""The metrics the dashboards and rules name are defined where they are served (fast checks;
test_prometheus_stack.py checks the same against scrapes of the running stack)."""

from __future__ import annotations

import subprocess
import sys
import time

import httpx
import kopf
import pytest
import yaml
from conftest import ROOT
from dashboard_panels import EXTERNAL_METRICS
from dashboard_queries import metric_names, queries
from monitoring_stack import free_port
from prometheus_client import REGISTRY

from lamina_operator import metrics as op

OPERATOR_METRICS = {
    "lamina_operator_reconcile_total", "lamina_operator_reconcile_duration_seconds",
    "lamina_operator_reconcile_errors_total", "lamina_autoscaler_desired_replicas",
    "lamina_autoscaler_current_replicas", "lamina_autoscaler_decisions_total",
    "lamina_autoscaler_last_decision_timestamp_seconds", "lamina_autoscaler_gpus",
    "lamina_autoscaler_gpu_budget", "lamina_autoscaler_metrics_errors_total",
}  # fmt: skip


def _families(text: str) -> set[str]:
    return {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}


def _named(dashboards) -> set[str]:
    exprs = [e for b in dashboards.values() for _, _, e in queries(b)]
    rules = yaml.safe_load((ROOT / "manifests" / "alerts" / "lamina-rules.yaml").read_text())
    exprs += [r["expr"] for g in rules["groups"] for r in g["rules"]]
    return set().union(*(metric_names(e) for e in exprs))


def test_serving_processes_define_every_serving_metric_named(dashboards):
    from lamina_engine.serving.metrics import ServerMetrics

    served = _families(ServerMetrics("decode").render().decode())
    wanted = {n for n in _named(dashboards) - EXTERNAL_METRICS
              if not n.startswith(("lamina_operator_", "lamina_autoscaler_"))}  # fmt: skip
    # counters' TYPE lines drop `_total`
    missing = {n for n in wanted if n not in served and n.removesuffix("_total") not in served}
    assert not missing


def test_the_operator_endpoint_serves_its_metrics(dashboards):
    port = free_port()
    code = f"from lamina_operator.metrics import serve; serve({port}); import time; time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        end = time.monotonic() + 30
        while True:
            try:
                text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=1).text
                break
            except httpx.HTTPError:
                if time.monotonic() > end or proc.poll() is not None:
                    raise
                time.sleep(0.2)
    finally:
        proc.kill()
        proc.wait()
    served = {n.removesuffix("_total") for n in _families(text)}
    assert {n.removesuffix("_total") for n in OPERATOR_METRICS} <= served
    wanted = {n for n in _named(dashboards) if n.startswith(("lamina_operator_", "lamina_autos"))}
    assert {n.removesuffix("_total") for n in wanted} <= served


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.mark.parametrize(
    "exc, result, reason",
    [(None, "ok", None), (kopf.TemporaryError("later"), "retry", "TemporaryError"),
     (kopf.PermanentError("bad spec"), "failed", "PermanentError"),
     (ValueError("bug"), "failed", "ValueError")],
)  # fmt: skip
def test_observe_reconcile_counts_each_outcome(exc, result, reason):
    kind = f"Test{result}{reason}"
    before = _value("lamina_operator_reconcile_duration_seconds_count", kind=kind)
    if exc is None:
        with op.observe_reconcile(kind):
            pass
    else:
        with pytest.raises(type(exc)), op.observe_reconcile(kind):
            raise exc
    assert _value("lamina_operator_reconcile_total", kind=kind, result=result) == 1
    assert _value("lamina_operator_reconcile_duration_seconds_count", kind=kind) == before + 1
    if reason:
        assert _value("lamina_operator_reconcile_errors_total", kind=kind, reason=reason) == 1
