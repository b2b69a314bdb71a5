"""Per-pool signals and the raw recommendation they give (before windows, bounds and budget).

Prefill is driven by TTFT (warm pods' percentile), its backlog (queued prompt tokens in seconds
of the pool's measured prefill rate) and its utilisation (that rate over the learned per-pod
capacity). Decode by TBT (warm pods' percentile) and KV demand (KV utilisation, scaled up by the
requests waiting for a decode slot). Work queued at the router is charged to the pool that will
do it.

The rule, per pool (HPA's, with latency kept out of scale-down):
- up when any signal's ratio exceeds 1 + tolerance: ceil(ready * ratio). The ratio was measured
  on the ready pods, so pods still starting count as capacity on the way: while a pool has
  starting pods its latency signals (which cannot reflect them yet) do not scale it further;
- down when every latency signal is under 1 - tolerance and the load ratios are too:
  ceil(ready * load ratio), i.e. the fewest pods that keep each load at its target. Without a
  load estimate (prefill that has never been saturated) it steps down by one;
- otherwise hold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..api import AutoscalingPolicySpec
from .decision import Signal
from .observation import Observation, PoolObservation, count, merge, quantile

# A per-pod backlog (prompt tokens) above which the pod is busy all interval: its prefill rate
# then measures its capacity. One chunk's worth; below that the rate measures demand.
SATURATED_BACKLOG_TOKENS = 512.0


@dataclass(frozen=True)
class PoolSignals:
    signals: tuple[Signal, ...]
    recommended: int
    note: str  # why the recommendation is what it is, one CamelCase word
    starting_credit: bool = False  # latency asked for more but pods are starting


def _ceil(x: float) -> int:
    return math.ceil(x - 1e-9)


def _warm(pool: PoolObservation, policy: AutoscalingPolicySpec):
    return [p for p in pool.pods if p.ready_seconds >= policy.warmup_seconds]


def _latency(name: str, pool, policy, target) -> list[Signal]:
    if target is None:
        return []
    hist = merge([getattr(p, name) for p in _warm(pool, policy)])
    if count(hist) <= 0:
        return []
    value = quantile(target.percentile / 100, hist)
    return [Signal(name, value, target.target_milliseconds / 1000, latency=True)]


def prefill_capacity(obs: Observation, previous: float | None) -> float | None:
    """Tokens/s one prefill pod computes when busy: the highest per-pod rate seen saturated."""
    best = previous
    for pod in obs.pools["prefill"].pods:
        if pod.queued_prefill_tokens >= SATURATED_BACKLOG_TOKENS and pod.prefill_tokens_per_second:
            best = max(best or 0.0, pod.prefill_tokens_per_second)
    return best


def prefill_signals(
    obs: Observation, policy: AutoscalingPolicySpec, capacity: float | None
) -> list[Signal]:
    pool = obs.pools["prefill"]
    out = _latency("ttft", pool, policy, policy.ttft)
    queued = sum(p.queued_prefill_tokens for p in pool.pods) + obs.router.queued_prefill_tokens
    rate = sum(p.prefill_tokens_per_second for p in pool.pods)
    if rate > 0:
        out.append(Signal("backlog", queued / rate, policy.backlog_target_seconds, latency=False))
    elif queued > 0:  # work waits and nothing computes it: as short as can be
        out.append(Signal("backlog", math.inf, policy.backlog_target_seconds, latency=False))
    if capacity and pool.ready:
        # 70%: an M/D/c prefill queue waits about one service time at this utilisation.
        out.append(Signal("utilization", rate / (capacity * pool.ready), 0.7, latency=False))
    return out


def decode_signals(obs: Observation, policy: AutoscalingPolicySpec) -> list[Signal]:
    pool = obs.pools["decode"]
    out = _latency("tbt", pool, policy, policy.tbt)
    if pool.ready and pool.pods:
        kv = sum(p.kv_utilization for p in pool.pods) / len(pool.pods)
        running = sum(p.running for p in pool.pods)
        waiting = sum(p.waiting_requests for p in pool.pods) + obs.router.queued_decode_requests
        if waiting and running:
            kv *= (running + waiting) / running  # each waiting request needs a running one's KV
        elif waiting:
            kv = math.inf
        target = policy.target_kv_utilization_percent / 100
        out.append(Signal("kv", kv, target, latency=False))
    return out


def recommend(
    pool: PoolObservation, signals: list[Signal], policy: AutoscalingPolicySpec
) -> PoolSignals:
    tol = policy.tolerance_percent / 100
    current, ready = pool.desired, pool.ready
    frozen = tuple(signals)
    if ready == 0:
        # Nothing measured on ready pods. Work waiting with no pod at all (scaled to zero) wakes
        # the pool; otherwise wait for the starting pods.
        wants = any(s.ratio > 1 + tol for s in signals if not s.latency)
        if current == 0 and wants:
            return PoolSignals(frozen, 1, "WakeUp")
        return PoolSignals(frozen, current, "NoReadyPods")
    usable = [s for s in signals if not (s.latency and pool.starting)]
    up = max((s.ratio for s in usable), default=0.0)
    if up > 1 + tol:
        rec = max(current, _ceil(ready * min(up, 1000.0)))
        if rec > current:
            return PoolSignals(frozen, rec, "Short")
        if pool.starting:  # the pods on their way already cover it
            return PoolSignals(frozen, current, "StartingPods", starting_credit=True)
    credited = pool.starting > 0 and any(s.ratio > 1 + tol for s in signals if s.latency)
    if credited:
        return PoolSignals(frozen, current, "StartingPods", starting_credit=True)
    latency_ok = all(s.ratio < 1 - tol for s in signals if s.latency)
    loads = [s.ratio for s in signals if not s.latency]
    if not latency_ok or any(r >= 1 - tol for r in loads):
        return PoolSignals(frozen, current, "WithinTolerance")
    if not signals:
        return PoolSignals(frozen, current, "NoSignals")
    if not any(s.latency for s in signals) and not signals_named(signals, "utilization"):
        return PoolSignals(frozen, current, "NoSignals")  # e.g. every pod still warming up
    if len(loads) == 0 or (len(loads) == 1 and signals_named(signals, "backlog")):
        # Latency is comfortable and nothing queues, but there is no utilisation estimate
        # to size the pool by: remove one pod at a time (windows and maxStep still apply).
        return PoolSignals(frozen, max(current - 1, 0), "StepDown")
    return PoolSignals(frozen, min(current, _ceil(ready * max(loads))), "Idle")


def signals_named(signals: list[Signal], name: str) -> bool:
    return any(s.name == name for s in signals)
