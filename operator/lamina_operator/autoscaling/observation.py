"""What the autoscaler sees at one evaluation: per pool the replica counts and per-pod samples.

Everything is plain data with no Kubernetes or clock in it, so `decide` is a pure function of
(policy, observation, history). Times are seconds (floats) on any monotonic-enough clock the
caller uses consistently (the operator uses Unix time); `now` travels in the observation.

Latencies travel as histogram deltas (the buckets a pod's Prometheus histogram gained over the
last interval), not as percentiles, so the pods that pass the warm-up filter can be merged into
one pool percentile exactly as Prometheus' histogram_quantile would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

POOLS = ("prefill", "decode")

# ((upper bound in seconds, cumulative count), ...) ascending, the last bound +inf.
Histogram = tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class PodSample:
    """One engine pod over the last interval (gauges now, counters as rates, histogram deltas)."""

    name: str
    ready_seconds: float  # how long it has been Ready; below warm-up its latencies are ignored
    ttft: Histogram = ()  # time to first token (prefill pods: prompt computed)
    tbt: Histogram = ()  # time between output tokens (decode pods)
    queued_prefill_tokens: float = 0.0  # prompt tokens waiting to be computed on this pod
    waiting_requests: float = 0.0  # requests queued on this pod
    running: float = 0.0  # sequences in the running batch
    kv_utilization: float = 0.0  # share of KV blocks in use, 0..1
    prefill_tokens_per_second: float = 0.0  # prompt tokens computed per second
    decode_tokens_per_second: float = 0.0  # output tokens decoded per second
    busy_fraction: float | None = None  # share of the interval spent in model steps, 0..1
    # requests that finished on this pod per second, and their output tokens per second
    # (lamina_request_generation_tokens' _count and _sum): their ratio is the mean output
    finished_per_second: float = 0.0
    finished_output_tokens_per_second: float = 0.0


@dataclass(frozen=True)
class PoolObservation:
    """One pool: what its Deployment asks for, what is ready, what is still starting."""

    desired: int  # the Deployment's spec.replicas as it is now (someone may have changed it)
    ready: int
    starting: int  # desired (or more, during a rollout) pods not yet ready
    gpus_per_replica: int = 0  # nvidia.com/gpu limit of one pod
    pods: tuple[PodSample, ...] = ()


@dataclass(frozen=True)
class RouterSample:
    """The router(s): end-to-end latencies (reported, not acted on) and work queued there."""

    ttft: Histogram = ()
    tbt: Histogram = ()
    queued_prefill_tokens: float = 0.0  # waiting for a prefill pod: charged to prefill
    queued_decode_requests: float = 0.0  # waiting for a decode pod: charged to decode
    requests_per_second: float = 0.0


@dataclass(frozen=True)
class Observation:
    now: float
    pools: dict[str, PoolObservation]
    router: RouterSample = field(default_factory=RouterSample)
    metrics_error: str | None = None  # set when metrics could not be read; decide holds


def merge(histograms: list[Histogram]) -> Histogram:
    """Sum histograms with the same bucket bounds (pods of one pool share an exporter)."""
    histograms = [h for h in histograms if h]
    if not histograms:
        return ()
    bounds = [b for b, _ in histograms[0]]
    totals = [0.0] * len(bounds)
    for hist in histograms:
        if [b for b, _ in hist] != bounds:
            raise ValueError("histograms of one pool must share bucket bounds")
        for i, (_, count) in enumerate(hist):
            totals[i] += count
    return tuple(zip(bounds, totals))


def quantile(q: float, hist: Histogram) -> float | None:
    """histogram_quantile(q, hist) as Prometheus computes it; None without observations.

    Linear interpolation inside the bucket holding rank q*total; a rank in the +inf bucket
    returns the highest finite bound (Prometheus' rule: the estimate cannot exceed it).
    """
    if not hist or hist[-1][1] <= 0:
        return None
    total = hist[-1][1]
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in hist:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (
                count - lower_count
            )
        lower_bound, lower_count = bound, count
    return lower_bound


def count(hist: Histogram) -> float:
    return hist[-1][1] if hist else 0.0
