"""The Lamina autoscaling dashboard's panels: the autoscaler's decisions and the operator's
reconcile passes (both from the operator's metrics endpoint)."""

from __future__ import annotations

from dashboard_panels import RI, SEL, Panel, Row, _quantiles, _t

AUTOSCALING: list[Row] = [
    Row(
        "Autoscaler",
        [
            Panel(
                "Replicas per pool: current vs desired",
                (
                    _t(
                        f"sum by (pool) (lamina_autoscaler_current_replicas{{{SEL}}})",
                        "current {{pool}}",
                    ),
                    _t(
                        f"sum by (pool) (lamina_autoscaler_desired_replicas{{{SEL}}})",
                        "desired {{pool}}",
                    ),
                ),
                "short",
            ),
            Panel(
                "P:D ratio",
                (
                    _t(
                        f'sum(lamina_autoscaler_current_replicas{{{SEL}, pool="prefill"}}) / '
                        f'sum(lamina_autoscaler_current_replicas{{{SEL}, pool="decode"}})',
                        "P:D",
                    ),
                ),
                "short",
                "Prefill replicas per decode replica; the policy bounds it.",
            ),
            Panel(
                "GPUs in use vs budget",
                (
                    _t(f"sum(lamina_autoscaler_gpus{{{SEL}}})", "GPUs"),
                    _t(f"sum(lamina_autoscaler_gpu_budget{{{SEL}}})", "budget"),
                ),
                "short",
            ),
            Panel(
                "Scaling decisions by reason",
                (
                    _t(
                        f"sum by (reason) (increase(lamina_autoscaler_decisions_total{{{SEL}}}[{RI}]))",
                        "{{reason}}",
                    ),
                ),
                "short",
            ),
            Panel(
                "Seconds since the last decision",
                (
                    _t(
                        f"time() - max(lamina_autoscaler_last_decision_timestamp_seconds{{{SEL}}})",
                        "age",
                    ),
                ),
                "s",
                kind="stat",
            ),
            Panel(
                "Metrics read errors",
                (
                    _t(
                        f"sum(rate(lamina_autoscaler_metrics_errors_total{{{SEL}}}[{RI}]))",
                        "errors",
                    ),
                ),
                "short",
                "Evaluations that could not read pod or router metrics.",
            ),
        ],
    ),
    Row(
        "Operator",
        [
            Panel(
                "Reconcile passes by result",
                (
                    _t(
                        f"sum by (kind, result) (rate(lamina_operator_reconcile_total[{RI}]))",
                        "{{kind}} {{result}}",
                    ),
                ),
                "ops",
            ),
            Panel(
                "Reconcile errors by reason",
                (
                    _t(
                        f"sum by (kind, reason) (rate(lamina_operator_reconcile_errors_total[{RI}])) "
                        "or on () vector(0)",
                        "{{kind}} {{reason}}",
                    ),
                ),
                "ops",
            ),
            Panel(
                "Reconcile duration",
                _quantiles("lamina_operator_reconcile_duration_seconds", "", "kind"),
                "s",
            ),
        ],
    ),
]
