"""Prometheus metrics of the operator process (docs/design.md §6: `lamina_` prefix, base units).

One operator per process, so these live in prometheus_client's default registry, which
`lamina-operator run --metrics-port` serves (with the client's process_* metrics). The
reconcile metrics are set by `observe_reconcile` at the kopf handler boundary; the autoscaler
gauges and counters by the autoscaling loop, one series per ServingDeployment (and pool).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import Counter, Gauge, Histogram, start_http_server

# Seconds: a reconcile pass is a handful of API calls, 5 ms on a quiet cluster to tens of
# seconds when the API server throttles.
_RECONCILE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

reconcile_total = Counter(
    "lamina_operator_reconcile_total",
    "Reconcile passes by resource kind and result (ok, retry, failed).",
    ["kind", "result"],
)
reconcile_duration_seconds = Histogram(
    "lamina_operator_reconcile_duration_seconds",
    "Wall time of one reconcile pass.",
    ["kind"],
    buckets=_RECONCILE_BUCKETS,
)
reconcile_errors_total = Counter(
    "lamina_operator_reconcile_errors_total",
    "Reconcile passes that ended in an error, by kind and error class.",
    ["kind", "reason"],
)

_SD = ["namespace", "deployment"]
autoscaler_desired_replicas = Gauge(
    "lamina_autoscaler_desired_replicas",
    "Replicas the autoscaler asks for, per pool (prefill, decode, router).",
    _SD + ["pool"],
)
autoscaler_current_replicas = Gauge(
    "lamina_autoscaler_current_replicas",
    "Replicas the pool's Deployment has now, as seen by the autoscaler.",
    _SD + ["pool"],
)
autoscaler_decisions_total = Counter(
    "lamina_autoscaler_decisions_total",
    "Autoscaler decisions by reason (scale-up, scale-down, hold, budget, ratio, ...).",
    _SD + ["reason"],
)
autoscaler_last_decision_timestamp_seconds = Gauge(
    "lamina_autoscaler_last_decision_timestamp_seconds",
    "Unix time of the autoscaler's last evaluation for this deployment.",
    _SD,
)
autoscaler_gpus = Gauge(
    "lamina_autoscaler_gpus", "GPUs the deployment's pools request in total now.", _SD
)
autoscaler_gpu_budget = Gauge(
    "lamina_autoscaler_gpu_budget", "The policy's GPU budget (0: no budget set).", _SD
)
autoscaler_metrics_errors_total = Counter(
    "lamina_autoscaler_metrics_errors_total",
    "Evaluations whose pod or router metrics could not be read.",
    _SD,
)


@contextmanager
def observe_reconcile(kind: str) -> Iterator[None]:
    """Count and time one reconcile pass; an exception is counted by its class and re-raised.

    kopf's TemporaryError (the world may fix it) counts as result="retry", every other
    exception as result="failed"; both also count in reconcile_errors_total.
    """
    start = time.perf_counter()
    try:
        yield
    except BaseException as exc:
        reason = type(exc).__name__
        result = "retry" if reason == "TemporaryError" else "failed"
        reconcile_total.labels(kind, result).inc()
        reconcile_errors_total.labels(kind, reason).inc()
        raise
    else:
        reconcile_total.labels(kind, "ok").inc()
    finally:
        reconcile_duration_seconds.labels(kind).observe(time.perf_counter() - start)


def serve(port: int) -> None:
    """Serve /metrics (the default registry) on 0.0.0.0:port from a daemon thread."""
    start_http_server(port)
