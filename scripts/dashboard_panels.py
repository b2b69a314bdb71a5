"""Building blocks of the Lamina dashboards: rows of panels, each a title, a unit and PromQL
targets. The panels themselves: dashboard_serving.py and dashboard_autoscaling.py.

scripts/dashboards.py turns these into Grafana JSON with grafana-foundation-sdk. Every metric
named in a panel is exported by the code (tests/observability/test_metric_definitions.py and
test_prometheus_stack.py check that), except those in EXTERNAL_METRICS, which
kube-state-metrics exports. Serving series carry `namespace` and `deployment` from the scrape
(Kubernetes service discovery relabelling, or static labels); `role` is the pool: router,
prefill, decode, unified.
"""

from __future__ import annotations

from dataclasses import dataclass, field

SEL = 'namespace="$namespace", deployment="$deployment"'
RI = "$__rate_interval"
ENGINES = 'role=~"prefill|decode|unified"'
# kube-state-metrics, not Lamina: a panel may name these; the export checks skip them.
EXTERNAL_METRICS = frozenset({"kube_pod_container_status_restarts_total"})


@dataclass(frozen=True)
class Target:
    expr: str
    legend: str = ""


@dataclass(frozen=True)
class Panel:
    title: str
    targets: tuple[Target, ...]
    unit: str = "short"
    description: str = ""
    kind: str = "timeseries"  # or "stat": one current value
    span: int = 8  # of 24 grid columns


@dataclass(frozen=True)
class Row:
    title: str
    panels: list[Panel] = field(default_factory=list)


def _t(expr: str, legend: str = "") -> Target:
    return Target(expr, legend)


def _quantiles(metric: str, selector: str, by: str = "") -> tuple[Target, ...]:
    """p50/p90/p99 of a histogram; `by` adds grouping labels (and legend parts)."""
    group = f"le, {by}" if by else "le"
    tail = " ".join(f"{{{{{b.strip()}}}}}" for b in by.split(",")) if by else ""
    return tuple(
        _t(
            f"histogram_quantile({q}, sum by ({group}) (rate({metric}_bucket{{{selector}}}[{RI}])))",
            f"p{int(q * 100)} {tail}".strip(),
        )
        for q in (0.5, 0.9, 0.99)
    )
