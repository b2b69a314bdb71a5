"""Dashboards and rules against real data: a real Prometheus scrapes `lamina up` (the demo model,
layered prefill with SPEED) and the operator's metrics endpoint while a bounded load runs; every
panel query, with the dashboard's variables substituted, must return data of the type its panel
draws, and every metric a panel or rule names must be in the scrapes."""

from __future__ import annotations

import time

import pytest
import yaml
from conftest import ROOT
from dashboard_panels import EXTERNAL_METRICS
from dashboard_queries import metric_names, queries, substitute, variable_values
from monitoring_stack import DEPLOYMENT, NAMESPACE, MonitoringStack

pytestmark = pytest.mark.slow

# Series only a Kubernetes cluster has: the autoscaler's loop reads pods' metrics and
# kube-state-metrics describes pods. Their queries must evaluate; they may come back empty.
NEEDS_A_CLUSTER = ("lamina_autoscaler_", "kube_")
RULES = ROOT / "manifests" / "alerts" / "lamina-rules.yaml"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with MonitoringStack(tmp_path_factory.mktemp("monitoring")) as s:
        s.started = time.time()
        s.sent = s.load(seconds=12)
        s.wait_for_scrapes()
        s.ended = time.time()
        yield s


def _exported(stack) -> set[str]:
    """Metric family names in real scrapes: TYPE lines (a labelled metric with no sample yet
    still has one) and sample names without histogram/counter suffixes."""
    names = set()
    for role in ("router", "prefill", "decode", "operator"):
        for line in stack.scrape(role).splitlines():
            if line.startswith("# TYPE "):
                names.add(line.split()[2])
            elif line and not line.startswith("#"):
                names.add(line.split("{")[0].split()[0])
    stripped = set()
    for n in names:
        for suffix in ("_bucket", "_sum", "_count", "_created", "_total"):
            if n.endswith(suffix):
                stripped.add(n.removesuffix(suffix))
    return names | stripped


def test_every_metric_a_panel_or_rule_names_is_exported(stack, dashboards):
    exprs = [e for b in dashboards.values() for _, _, e in queries(b)]
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        exprs += [r["expr"] for r in group["rules"]]
    named = set().union(*(metric_names(e) for e in exprs))
    missing = named - _exported(stack) - EXTERNAL_METRICS
    assert not missing, f"named in dashboards/rules but exported by no Lamina process: {missing}"


def test_every_panel_query_returns_data(stack, dashboards):
    assert stack.sent >= 6, stack.sent
    empty, wrong = [], []
    for board in dashboards.values():
        values = variable_values(board, NAMESPACE, DEPLOYMENT)
        for title, kind, expr in queries(board):
            promql = substitute(expr, values)
            if kind == "stat":
                data = stack.query(promql, at=stack.ended)
                expected = "vector"
            else:
                data = stack.query_range(promql, stack.started, stack.ended)
                expected = "matrix"
            if data["resultType"] != expected:
                wrong.append((title, data["resultType"], promql))
            elif not data["result"] and not any(m in promql for m in NEEDS_A_CLUSTER):
                empty.append((title, promql))
    assert not wrong, wrong
    assert not empty, "panels without data:\n" + "\n".join(f"{t}: {q}" for t, q in empty)


def test_recording_rules_evaluate_on_the_scraped_series(stack):
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            data = stack.query(rule["expr"], at=stack.ended)
            assert data["resultType"] == "vector"
            if "record" in rule and rule["record"].endswith(("5m", "30m", "1h")):
                # streamed requests happened: the short-window SLO ratios exist
                assert data["result"], rule["record"]
