"""The engine's latency buckets resolve the SLOs the autoscaler acts on, and the simulation uses
the same buckets (it keeps a copy: the operator may not import the engine).

The engine's real ServerMetrics exports TBT samples; the operator's scrape parser reads the
exposition text and `quantile` computes the pool's percentile as decide does.
"""

import pytest

from lamina_engine.serving.metrics import LATENCY_BUCKETS, ServerMetrics
from lamina_operator.autoscaling.observation import quantile
from lamina_operator.autoscaling.scrape import parse
from lamina_operator.autoscaling.sim.cluster import BUCKETS

TBT = "lamina_request_tbt_seconds"


def test_sim_buckets_are_the_engines():
    assert BUCKETS[:-1] == LATENCY_BUCKETS
    assert BUCKETS[-1] == float("inf")


def test_bounds_step_at_most_half_where_slos_live():
    inner = [b for b in LATENCY_BUCKETS if 0.01 <= b <= 1.0]
    assert all(hi / lo <= 1.5 for lo, hi in zip(inner, inner[1:]))


def test_alert_rule_bounds_are_buckets():
    # manifests/alerts/lamina-rules.yaml compares against le="1.0" (TTFT) and le="0.1" (TBT)
    assert 1.0 in LATENCY_BUCKETS and 0.1 in LATENCY_BUCKETS


@pytest.mark.parametrize("step", [0.012, 0.026, 0.042, 0.055, 0.068, 0.09, 0.35])
def test_tbt_p90_read_near_the_step(step):
    """A decode pod stepping at `step` (every token gap equal, the worst case: the p90 is read
    90% of the way up the step's bucket) reads a p90 within a quarter of it. The former buckets
    (0.025, 0.05, 0.1) read 26 ms as 47.5 ms and 68 ms as 95 ms."""
    metrics = ServerMetrics("decode")
    before = parse(metrics.render().decode(), 0.0)
    for _ in range(200):
        metrics.tbt.labels(role="decode").observe(step)
    after = parse(metrics.render().decode(), 15.0)
    hist = tuple(
        (le, count - before.buckets.get(TBT, {}).get(le, 0.0))
        for le, count in sorted(after.buckets[TBT].items())
    )
    assert quantile(0.9, hist) == pytest.approx(step, rel=0.25)
