"""Per-pool signals and the raw recommendation they give (before windows, bounds and budget).

Prefill signals:
- ttft: the warm pods' TTFT percentile vs the target;
- utilization: prompt-token arrival rate (computed rate + growth of the waiting prompts since
  the last evaluation) over the capacity of the ready and starting pods, vs 70% (an M/D/c
  prefill queue waits about one service time there). Capacity per pod is measured: prompt
  tokens per second of busy time (the engine's step seconds), else the highest per-pod rate
  seen while that pod had a backlog;
- backlog: waiting prompt tokens (pods + router) in seconds of the ready and starting pods'
  capacity (their measured rate until a capacity is known), vs targetPrefillBacklog.
Decode signals:
- tbt: the warm pods' TBT percentile vs the target;
- kv: KV utilisation scaled up by the requests waiting for a decode slot, vs the KV target;
- demand (a forecast, up only): the output tokens/s the requests entering decode will ask for
  (arrivals: prompts the prefill pool finished per second; x the mean output of the requests
  decode finished) over what the pool's pods decode at the TBT target. In steady state
  tokens/s = arrivals x mean output (Little's law): when the arrivals or the outputs grow, the
  running batch and the step follow over a request's lifetime (tens of seconds) while this
  says at once how many pods the new demand needs. The tokens/s a pod decodes at the target is
  learned (`decode_capacity`): the most a warm pod decoded in an interval whose TBT percentile
  was at the target (within the tolerance below it). The signal exists only while the demand
  is ahead of what the pool decodes now (past the tolerance): otherwise the batch of now is
  the demand and tbt/kv measure it. It only raises the pool (left out of the scale-down sizing
  and of the hold), and is usable while pods start (a flow: pods on their way are counted).

The rule, per pool, is the HPA's over several metrics (the largest recommendation wins):
- up when any usable signal's ratio exceeds 1 + tolerance: the largest ceil(pods * ratio) of
  those signals, `pods` being what the signal was measured over, compared with the replicas
  already asked for. Latencies are measured on the warm pods only, load signals spread over the
  ready and starting pods: either way pods starting or warming up count as capacity on its way.
  While a pool has such pods only the flow signals (utilization, kv) and decode's tbt can scale
  it further: TTFT and the backlog grow with a queue the pods on their way will drain, so they
  would scale the same burst again. TBT is the step of the batch running now: warm pods x its
  ratio is what the demand of now needs, and it raises the pool only past the replicas asked
  for. (It was excluded too while the engine's buckets read a 26 ms step as 47.5 ms.);
- a latency is usable only while queueing shows (prefill: prompts waiting, or the pods at least
  half busy; decode: batches of two or more): otherwise it is the service time itself, which
  more pods cannot lower. Nor is TTFT usable while the mean prompt's own compute time is
  within the tolerance of the target (`prefill_service_seconds`): prompts that long miss the
  target on an idle pod, and the flow signals size the pool;
- down when every usable signal is under 1 - tolerance: ceil(pods * largest ratio), the
  backlog left out (a stock, not a flow: zero says nothing about the pods the flow needs);
- otherwise hold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..api import AutoscalingPolicySpec
from .decision import HistoryEntry, Signal
from .observation import Observation, PoolObservation, count, merge, quantile

# A per-pod backlog (prompt tokens) above which the pod is busy all interval: its prefill rate
# then measures its capacity. One chunk's worth; below that the rate measures demand.
SATURATED_BACKLOG_TOKENS = 512.0
PREFILL_UTILIZATION_TARGET = 0.7
MEASURABLE_BUSY = 0.2  # below this share of busy time a rate / busy estimate is too noisy
BUSY = 0.5  # prefill utilisation from which prompts wait at times (TTFT is load-bound)
# While pods start or warm up, these cannot show the capacity on its way (the flows can; so can
# TBT, compared with the replicas asked for: see the module docstring).
SETTLING_EXCLUDED = ("backlog", "ttft")
# Signals that only push a pool up: left out of the scale-down sizing and of the hold.
UP_ONLY = ("backlog", "demand")


@dataclass(frozen=True)
class PoolSignals:
    signals: tuple[Signal, ...]
    recommended: int
    note: str  # why the recommendation is what it is, one CamelCase word
    starting_credit: bool = False  # more was asked for, but pods on their way cover it


def _ceil(x: float) -> int:
    return math.ceil(x - 1e-9)


def _latency(name: str, pool: PoolObservation, policy, target, actionable: bool) -> list[Signal]:
    if target is None:
        return []
    warm = [p for p in pool.pods if p.ready_seconds >= policy.warmup_seconds]
    hist = merge([getattr(p, name) for p in warm])
    if count(hist) <= 0:
        return []
    value = quantile(target.percentile / 100, hist)
    # Only the warm pods were measured: the pods warming up or starting are capacity on its way.
    return [Signal(name, value, target.target_milliseconds / 1000, True, len(warm), actionable)]


def prefill_queued(obs: Observation) -> float:
    pods = obs.pools["prefill"].pods
    return sum(p.queued_prefill_tokens for p in pods) + obs.router.queued_prefill_tokens


def prefill_capacity(obs: Observation, previous: float | None, warmup: float) -> float | None:
    """Tokens/s one prefill pod computes while busy.

    Measured where the pods report their busy time (engine step seconds): rate / busy share,
    averaged over the warm pods busy enough to tell. Otherwise the highest per-pod rate seen while
    the pod had a backlog (a lower bound: it may not have been busy all interval)."""
    measured = [
        p.prefill_tokens_per_second / p.busy_fraction
        for p in obs.pools["prefill"].pods
        if p.busy_fraction is not None
        and p.busy_fraction >= MEASURABLE_BUSY
        and p.ready_seconds >= warmup
        and p.prefill_tokens_per_second > 0
    ]
    if measured:
        return sum(measured) / len(measured)
    best = previous
    for pod in obs.pools["prefill"].pods:
        if pod.queued_prefill_tokens >= SATURATED_BACKLOG_TOKENS and pod.prefill_tokens_per_second:
            best = max(best or 0.0, pod.prefill_tokens_per_second)
    return best


def prefill_service_seconds(
    obs: Observation, capacity: float | None, interval: float
) -> float | None:
    """Seconds a warm pod needs for the interval's mean prompt (prompt tokens computed / first
    tokens, at the measured capacity); None when it cannot be told. `interval`: what the
    rates and histogram deltas were measured over (the evaluation interval: the scrape's, or
    PromQL's range)."""
    if not capacity:
        return None
    pods = obs.pools["prefill"].pods
    prompts = sum(count(p.ttft) for p in pods)
    if prompts <= 0:
        return None
    tokens = sum(p.prefill_tokens_per_second for p in pods) * interval
    return tokens / prompts / capacity


def prefill_signals(
    obs: Observation,
    policy: AutoscalingPolicySpec,
    capacity: float | None,
    last: HistoryEntry | None,
) -> list[Signal]:
    pool = obs.pools["prefill"]
    queued = prefill_queued(obs)
    rate = sum(p.prefill_tokens_per_second for p in pool.pods)
    pods = pool.ready + pool.starting
    # Load-bound: prompts wait now, or the pods are busy enough for them to wait at times (the
    # waiting gauge is one instant), or there is no capacity estimate to tell.
    busy = not capacity or not pool.ready or rate / (capacity * pool.ready) >= BUSY
    # Service-bound: the mean prompt alone takes most of the TTFT target to compute on an idle
    # pod (long prompts). Waiting is then not what makes TTFT miss; more pods cannot meet it,
    # and the flow (utilization, backlog) sizes the pool instead of the latency.
    service = prefill_service_seconds(obs, capacity, policy.evaluation_interval_seconds)
    attainable = (
        policy.ttft is None
        or service is None
        or (service < policy.ttft.target_milliseconds / 1000 * (1 - policy.tolerance_percent / 100))
    )
    out = _latency(
        "ttft", pool, policy, policy.ttft, actionable=(queued > 0 or busy) and attainable
    )
    # Seconds the pods need for the waiting prompts: at their capacity once it is known, else
    # at the rate they computed (lower while they are not saturated: errs towards more pods).
    speed = capacity * pods if capacity else rate
    backlog_target = policy.backlog_target_seconds
    if speed > 0:
        out.append(Signal("backlog", queued / speed, backlog_target, False, pods))
    elif queued > 0:  # work waits and nothing computes it
        out.append(Signal("backlog", 2 * backlog_target, backlog_target, False, max(pods, 1)))
    if capacity and pods:
        demand = rate
        if last is not None and last.prefill_queued is not None and obs.now > last.time:
            demand = max(0.0, rate + (queued - last.prefill_queued) / (obs.now - last.time))
        util = demand / (capacity * pods)
        out.append(Signal("utilization", util, PREFILL_UTILIZATION_TARGET, False, pods))
    return out


def _decode_load(obs: Observation) -> tuple[float, float, bool]:
    """Decode's requests running and waiting (on its pods and in the router), and whether its
    pods batch (2+ running per ready pod): while they do not, a step is one request's and TBT
    is the service time, not a load."""
    pool = obs.pools["decode"]
    running = sum(p.running for p in pool.pods)
    waiting = sum(p.waiting_requests for p in pool.pods) + obs.router.queued_decode_requests
    return running, waiting, pool.ready > 0 and running / pool.ready >= 2


def decode_signals(obs: Observation, policy: AutoscalingPolicySpec) -> list[Signal]:
    pool = obs.pools["decode"]
    running, waiting, batched = _decode_load(obs)
    out = _latency("tbt", pool, policy, policy.tbt, actionable=batched)
    if pool.ready and pool.pods:
        target = policy.target_kv_utilization_percent / 100
        kv = sum(p.kv_utilization for p in pool.pods) / len(pool.pods)
        if waiting and running:
            kv *= (running + waiting) / running  # each waiting request needs a running one's KV
        elif waiting:  # requests wait and none runs: KV per request unknown, ask for double
            kv = max(kv, 2 * target)
        # the demand of the ready pods, spread over them and the pods on their way
        pods = pool.ready + pool.starting
        out.append(Signal("kv", kv * pool.ready / pods, target, False, pods))
    return out


def decode_capacity(
    obs: Observation, policy: AutoscalingPolicySpec, previous: float | None
) -> float | None:
    """Output tokens/s one decode pod decodes at the TBT target: the most a warm pod decoded
    over an interval whose TBT percentile was at the target (within the tolerance below it),
    i.e. while its batch was about the one that meets it; the previous value when no pod was
    there. Rates at lower TBTs are not used: a lightly loaded pod's rate says little about its
    rate at the target (the step has a floor), and would make the forecast ask for too many."""
    best = previous
    if policy.tbt is None:
        return best
    target = policy.tbt.target_milliseconds / 1000
    low = target * (1 - policy.tolerance_percent / 100)
    for pod in obs.pools["decode"].pods:
        if pod.ready_seconds < policy.warmup_seconds or count(pod.tbt) <= 0:
            continue
        value = quantile(policy.tbt.percentile / 100, pod.tbt)
        if value is not None and low <= value <= target and pod.decode_tokens_per_second > 0:
            best = max(best or 0.0, pod.decode_tokens_per_second)
    return best


@dataclass(frozen=True)
class DecodeDemand:
    """The decode forecast's inputs: requests/s entering decode, their mean output, and the
    output tokens/s that asks of the pool (arrivals x mean output)."""

    arrivals: float
    mean_output: float

    @property
    def tokens_per_second(self) -> float:
        return self.arrivals * self.mean_output

    def describe(self, capacity: float) -> str:
        return (
            f"demand {self.arrivals:.3g} req/s x {self.mean_output:.0f} tokens = "
            f"{self.tokens_per_second:.0f} tokens/s at {capacity:.0f}/pod"
        )


def decode_demand(obs: Observation, interval: float) -> DecodeDemand | None:
    """None when it cannot be told: no request finished on decode this interval (no mean
    output), or nothing measured the arrivals."""
    decode = obs.pools["decode"].pods
    finished = sum(p.finished_per_second for p in decode)
    if finished <= 0 or interval <= 0:
        return None
    mean_output = sum(p.finished_output_tokens_per_second for p in decode) / finished
    # prompts computed (first tokens) by the prefill pool: the requests on their way to decode
    arrivals = sum(count(p.ttft) for p in obs.pools["prefill"].pods) / interval
    if arrivals <= 0:
        return None
    return DecodeDemand(arrivals, mean_output)


def demand_signal(
    obs: Observation,
    policy: AutoscalingPolicySpec,
    demand: DecodeDemand | None,
    capacity: float | None,
) -> list[Signal]:
    pool = obs.pools["decode"]
    pods = pool.ready + pool.starting
    if demand is None or not capacity or not pool.ready or not pods:
        return []
    # A pool that takes every request as it comes (no pod batching, nothing waiting) keeps up
    # with its demand: one unbatched stream can decode more tokens/s than the per-pod rate
    # learned at the TBT target, and an arrival window running ahead of the decodes would then
    # scale the pool up after every scale-down (seen on a slow host's e2e: 1 in flight flapped
    # decode 1 <-> 2 for minutes). TBT and KV size such a pool.
    _, waiting, batched = _decode_load(obs)
    if not batched and not waiting:
        return []
    # Only while the demand is ahead of what the pool decodes now (the batch still building
    # up): otherwise the batch of now is the demand, and TBT and KV measure it directly.
    decoding = sum(p.decode_tokens_per_second for p in pool.pods)
    if demand.tokens_per_second <= decoding * (1 + policy.tolerance_percent / 100):
        return []
    # the pods the demand needs at the measured per-pod rate, over the ready and starting pods
    return [Signal("demand", demand.tokens_per_second / (capacity * pods), 1.0, False, pods)]


def recommend(
    pool: PoolObservation, signals: list[Signal], policy: AutoscalingPolicySpec
) -> PoolSignals:
    tol = policy.tolerance_percent / 100
    current = pool.desired
    frozen = tuple(signals)
    if pool.ready == 0:
        # Nothing measured on ready pods. Work waiting with no pod at all (scaled to zero) wakes
        # the pool; otherwise wait for the starting pods.
        wants = any(s.ratio > 1 + tol for s in signals if not s.latency)
        if current == 0 and wants:
            return PoolSignals(frozen, 1, "WakeUp")
        return PoolSignals(frozen, current, "NoReadyPods")
    settling = pool.starting > 0 or any(p.ready_seconds < policy.warmup_seconds for p in pool.pods)
    usable = [s for s in signals if s.actionable and not (settling and s.name in SETTLING_EXCLUDED)]
    up = max(usable, key=lambda s: s.ratio, default=None)
    if up is not None and up.ratio > 1 + tol:
        # the largest recommendation wins (not the largest ratio: signals measured over fewer
        # pods, e.g. a latency on the warm pods only, would hide a flow's larger need)
        short = [s for s in usable if s.ratio > 1 + tol]
        rec = max(current, *(_ceil(s.pods * min(s.ratio, 1000.0)) for s in short))
        if rec > current:
            return PoolSignals(frozen, rec, "Short")
        return PoolSignals(frozen, current, "StartingPods", starting_credit=True)
    if settling and any(s.actionable and s.ratio > 1 + tol for s in signals):
        return PoolSignals(frozen, current, "StartingPods", starting_credit=True)
    if up is None:
        return PoolSignals(frozen, current, "NoSignals")
    sizing = [s for s in usable if s.name not in UP_ONLY]
    if not sizing:
        return PoolSignals(frozen, current, "NoSignals")
    held = [s for s in usable if s.name != "demand"]  # the backlog holds (as before)
    if max(s.ratio for s in held) >= 1 - tol:
        return PoolSignals(frozen, current, "WithinTolerance")
    need = max(_ceil(s.pods * s.ratio) for s in sizing)
    return PoolSignals(frozen, min(current, need), "Idle")
