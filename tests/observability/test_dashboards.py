"""The dashboards as committed: generated (no drift), portable across Grafanas, and shipped by
the chart together with the alert rules."""

from __future__ import annotations

import json
import subprocess
import sys

import yaml
from chart_helpers import render
from conftest import ROOT
from dashboard_queries import panels, queries, substitute, variable_values

SCRIPT = ROOT / "scripts" / "dashboards.py"


def test_committed_files_equal_the_generator_output():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_fixed_uids_and_the_datasource_variable(dashboards):
    assert {b["uid"] for b in dashboards.values()} == {"lamina-serving", "lamina-autoscaling"}
    for name, board in dashboards.items():
        names = [v["name"] for v in board["templating"]["list"]]
        assert names[:3] == ["datasource", "namespace", "deployment"], name
        (ds,) = [v for v in board["templating"]["list"] if v["name"] == "datasource"]
        assert ds["type"] == "datasource" and ds["query"] == "prometheus"
        for panel in panels(board):
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == "${datasource}", panel["title"]
        # no datasource uid of some Grafana leaked in anywhere
        uids = {m for m in _values(board, "uid")}
        assert uids <= {"${datasource}", board["uid"]}, uids


def _values(obj, key):
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == key:
                yield v
            yield from _values(v, key)
    elif isinstance(obj, list):
        for v in obj:
            yield from _values(v, key)


def test_every_query_filters_by_namespace_and_deployment_or_is_operator_wide(dashboards):
    for board in dashboards.values():
        for title, _, expr in queries(board):
            operator_wide = "lamina_operator_" in expr
            scoped = '"$namespace"' in expr and "$deployment" in expr
            slo_line = expr.startswith("vector($")
            assert operator_wide or scoped or slo_line, f"{title}: {expr}"
            substitute(expr, variable_values(board, "ns", "d"))  # every variable has a value


def test_panels_the_issue_asks_for_exist(dashboards):
    titles = {p["title"] for b in dashboards.values() for p in panels(b)}
    wanted = {
        "Request rate by status code", "Errors by status code", "TTFT (router)", "TBT (router)",
        "Prompt length", "Output length", "Router: open requests per backend kind",
        "Prefill queue (tokens)", "Prefill step time", "Running batch by pool",
        "KV-cache utilisation", "KV blocks used / total", "Preemptions", "Prefix-cache hit rate",
        "Replicas per pool: current vs desired", "P:D ratio", "GPUs in use vs budget",
        "Scaling decisions by reason", "Disaggregated vs local prefill", "KV bytes per second",
        "KV transfer time", "KV transfer exposed time", "KV failures and fallbacks by reason",
        "Pod restarts (kube-state-metrics)",
        "Expert weight bytes per token, by scheduling policy", "Layer groups per cohort",
        "SPEED: prompt token-layers", "SPEED: KV bytes saved", "KV bytes shipped per layer group",
        "Reconcile passes by result", "Reconcile errors by reason", "Reconcile duration",
    }  # fmt: skip
    assert wanted - titles == set()


def test_the_chart_ships_dashboards_and_rules(helm, dashboards):
    off = render(helm)
    assert "PrometheusRule" not in {o["kind"] for o in off}, "needs the CRD: off by default"
    objects = render(helm, "--set", "prometheusRule.enabled=true",
                     "--set", "prometheusRule.labels.release=monitoring")  # fmt: skip
    (cm,) = [
        o for o in objects if o["kind"] == "ConfigMap" and "dashboards" in o["metadata"]["name"]
    ]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert {k: json.loads(v) for k, v in cm["data"].items()} == dashboards
    (rule,) = [o for o in objects if o["kind"] == "PrometheusRule"]
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["labels"]["release"] == "monitoring"
    rules = yaml.safe_load((ROOT / "manifests" / "alerts" / "lamina-rules.yaml").read_text())
    assert rule["spec"] == rules


def test_the_operator_pod_exposes_the_metrics_port_it_serves(helm):
    objects = render(helm, "--set", "metrics.port=9200")
    (deploy,) = [o for o in objects if o["kind"] == "Deployment"]
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    assert "--metrics-port=9200" in container["args"]
    assert {"name": "metrics", "containerPort": 9200, "protocol": "TCP"} in container["ports"]
