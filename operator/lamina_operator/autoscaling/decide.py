"""`decide(policy, observation, history) -> Decision`: the autoscaler's one pure function.

No Kubernetes, no clock (`observation.now`), no randomness: the same inputs give the same
Decision, which is why the simulation and the table tests can replay it. The steps, per pool
unless said otherwise, each recorded as a clamp when it changes the number:
1. manual change: the Deployment's replicas differ from what the last active decision left
   there. `yield` holds the pool at the new value for holdSeconds; `reclaim` reports it and
   decides as usual;
2. signals -> raw recommendation (signals.py);
3. stabilisation windows, as the HPA: the result never goes below the lowest
   recommendation of the scale-up window nor above the highest of the scale-down window
   (scale up fast, scale down only to the highest recommendation over the window). The
   scale-down window is learned per pool (`_learned_window`): at least the policy's, longer
   once demand came back after a scale-down;
4. max step per decision (scaleUp.maxStep, scaleDown.maxStep);
5. min/max replicas of the pool;
6. P:D ratio bounds, then the GPU budget (constraints.py), both over the two pools.
Metrics that could not be read hold every pool where it is (reason MetricsUnavailable).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from ..api import AutoscalingPolicySpec
from .constraints import enforce_budget, enforce_ratio, gpus
from .decision import Decision, HistoryEntry, PoolDecision
from .observation import POOLS, Observation
from .signals import (
    PoolSignals,
    decode_capacity,
    decode_demand,
    decode_signals,
    demand_signal,
    prefill_capacity,
    prefill_queued,
    prefill_signals,
    recommend,
)

# A learned scale-down window covers the time the demand was away, with a quarter more (the
# gaps between bursts vary); at most an hour (the HPA field's limit, and the history kept).
RECURRENCE_MARGIN = 1.25
LONGEST_LEARNED_WINDOW = 3600.0


def _learned_window(
    pool: str, current: int, rec: int, base: float, history: Sequence[HistoryEntry], now: float
) -> tuple[float, str | None]:
    """The pool's scale-down window now, and a note when it just grew.

    A pool needs more than its `current` replicas again after a lull in which it was scaled
    down: the capacity it gave up was needed back before a pod could start. The window then
    grows to cover that lull (the time since the demand was last above `current`), so the
    next lull as long keeps the pods. A new pod takes start-up + warm-up to serve; recurring
    bursts shorter than that are otherwise met each time by the smaller pool."""
    learned = next((h.scale_down_seconds[pool] for h in reversed(history)
                    if pool in h.scale_down_seconds), base)  # fmt: skip
    window = max(base, learned)
    if rec <= current:
        return window, None
    i = len(history) - 1
    while i >= 0 and history[i].recommended.get(pool, 0) > current:
        i -= 1  # the current episode of demand above `current`
    lull_end = i
    while i >= 0 and history[i].recommended.get(pool, 0) <= current:
        i -= 1  # the lull before it
    if i < 0 or i == lull_end:
        return window, None
    before = history[i].applied
    lull = [h.applied[pool] for h in history[i + 1 : lull_end + 1] if h.applied]
    if not before or not lull or min(lull) >= before.get(pool, 0):
        return window, None  # the pool kept its replicas through the lull: nothing to learn
    gap = now - history[i].time
    grown = min(LONGEST_LEARNED_WINDOW, max(window, RECURRENCE_MARGIN * gap))
    if grown <= window:
        return window, None
    return (
        grown,
        f"scaleDown window learned: {window:.0f}s->{grown:.0f}s (demand back after {gap:.0f}s)",
    )


def _known_windows(history: Sequence[HistoryEntry]) -> dict[str, float]:
    """Each pool's latest scale-down window in the history (kept across evaluations that
    compute none: metrics unavailable, a pool held for a manual change)."""
    out: dict[str, float] = {}
    for entry in reversed(history):
        for pool, seconds in entry.scale_down_seconds.items():
            out.setdefault(pool, seconds)
        if len(out) == len(POOLS):
            break
    return out


def _stabilize(
    pool: str,
    current: int,
    rec: int,
    policy: AutoscalingPolicySpec,
    history,
    now: float,
    down_seconds: float,
) -> int:
    def window(seconds: int) -> list[int]:
        recs = [h.recommended[pool] for h in history if h.time > now - seconds]
        # A window longer than the history (a fresh or restarted autoscaler) assumes the
        # replicas it found were recommended all along: no scale-down before a full window.
        if seconds > 0 and (not history or history[0].time > now - seconds):
            recs.append(current)
        return recs + [rec]

    up = min(window(policy.scale_up.stabilization_window_seconds))
    down = max(window(down_seconds))
    out = current
    if out < up:
        out = up
    if out > down:
        out = down
    return out


def _manual(
    policy: AutoscalingPolicySpec, obs: Observation, last: HistoryEntry | None
) -> tuple[list[str], dict[str, float]]:
    """(pools changed by someone else just now, pool -> start of an active yield hold)."""
    changed: list[str] = []
    since: dict[str, float] = {}
    if policy.mode != "active" or last is None:
        return changed, since
    hold = policy.manual_change.hold_seconds
    for pool in POOLS:
        if last.applied is not None and obs.pools[pool].desired != last.applied.get(pool):
            changed.append(pool)
            if policy.manual_change.action == "yield" and hold > 0:
                since[pool] = obs.now
        elif pool in last.manual_since and obs.now < last.manual_since[pool] + hold:
            if policy.manual_change.action == "yield":
                since[pool] = last.manual_since[pool]
    return changed, since


def decide(
    policy: AutoscalingPolicySpec, obs: Observation, history: Sequence[HistoryEntry] = ()
) -> Decision:
    last = history[-1] if history else None
    per_replica = {pool: obs.pools[pool].gpus_per_replica for pool in POOLS}
    current = {pool: obs.pools[pool].desired for pool in POOLS}
    gpus_before = gpus(current, per_replica)
    capacity = last.prefill_capacity if last else None
    decode_rate = last.decode_capacity if last else None
    if obs.metrics_error is not None:
        pools = {
            pool: PoolDecision(
                current[pool], obs.pools[pool].ready, obs.pools[pool].starting, (),
                current[pool], current[pool], current[pool], ("metrics unavailable: hold",),
            )
            for pool in POOLS
        }  # fmt: skip
        return Decision(
            obs.now, policy.mode, "MetricsUnavailable", pools, gpus_before, gpus_before,
            policy.gpu_budget, manual_since=dict(last.manual_since) if last else {},
            prefill_capacity=capacity, notes=(f"metrics: {obs.metrics_error}",),
            decode_capacity=decode_rate, scale_down_seconds=_known_windows(history),
        )  # fmt: skip
    changed, manual_since = _manual(policy, obs, last)
    fixed = set(manual_since)
    capacity = prefill_capacity(obs, capacity, policy.warmup_seconds)
    decode_rate = decode_capacity(obs, policy, decode_rate)
    demand = decode_demand(obs, policy.evaluation_interval_seconds)
    signals = {
        "prefill": prefill_signals(obs, policy, capacity, last),
        "decode": decode_signals(obs, policy),
    }
    signals["decode"] += demand_signal(obs, policy, demand, decode_rate)
    inputs: dict[str, tuple[str, ...]] = {pool: () for pool in POOLS}
    if demand is not None and decode_rate:
        inputs["decode"] = (demand.describe(decode_rate),)
    raw: dict[str, PoolSignals] = {}
    stabilized: dict[str, int] = {}
    counts: dict[str, int] = {}
    clamps: dict[str, list[str]] = {pool: [] for pool in POOLS}
    down_seconds: dict[str, float] = {}
    for pool in POOLS:
        po = obs.pools[pool]
        if pool in changed and pool not in fixed and last is not None and last.applied:
            # reclaim: decide from what the autoscaler had set, not from the manual value
            po = replace(po, desired=last.applied[pool])
            clamps[pool].append(f"manual change: {obs.pools[pool].desired} reclaimed")
        raw[pool] = recommend(po, signals[pool], policy)
        if pool in fixed:
            clamps[pool].append(f"manual change: held at {po.desired} (yield)")
            stabilized[pool] = counts[pool] = po.desired
            continue
        rec = raw[pool].recommended
        base = float(policy.scale_down.stabilization_window_seconds)
        down_seconds[pool], learned = _learned_window(pool, po.desired, rec, base, history, obs.now)
        if learned:
            clamps[pool].append(learned)
        stabilized[pool] = n = _stabilize(
            pool, po.desired, rec, policy, history, obs.now, down_seconds[pool]
        )
        if n != rec:
            window = "scaleUp" if n < rec else "scaleDown"
            clamps[pool].append(f"{window} window: {rec}->{n}")
        step_up, step_down = policy.scale_up.max_step, policy.scale_down.max_step
        limited = max(po.desired - step_down, min(po.desired + step_up, n))
        if limited != n:
            clamps[pool].append(f"maxStep: {n}->{limited}")
            n = limited
        low, high = getattr(policy, pool).min_replicas, getattr(policy, pool).max_replicas
        bounded = max(low, min(high, n))
        if bounded != n:
            clamps[pool].append(f"{'min' if bounded > n else 'max'}Replicas: {n}->{bounded}")
        counts[pool] = bounded
    counts, ratio_notes = enforce_ratio(policy, counts, fixed)
    # Every signal counts here, acted on or not: a pressure that jumps whenever a latency turns
    # (not) load-bound made the budget trade replicas back and forth (246 moves an hour).
    pressure = {
        pool: (max((s.ratio for s in signals[pool]), default=0.0), obs.pools[pool].ready)
        for pool in POOLS
    }
    counts, budget_notes = enforce_budget(policy, counts, per_replica, pressure, fixed, current)
    for pool, text in ratio_notes + budget_notes:
        if pool is not None:
            clamps[pool].append(text)
    pools = {
        pool: PoolDecision(
            current=current[pool],
            ready=obs.pools[pool].ready,
            starting=obs.pools[pool].starting,
            signals=tuple(signals[pool]),
            recommended=raw[pool].recommended,
            stabilized=stabilized[pool],
            desired=counts[pool],
            clamps=tuple(clamps[pool]),
            held=pool in fixed,
            inputs=inputs[pool],
        )
        for pool in POOLS
    }
    notes = tuple(text for pool, text in ratio_notes + budget_notes if pool is None)
    reason = _reason(pools, raw, changed, fixed, budget_notes)
    return Decision(
        time=obs.now,
        mode=policy.mode,
        reason=reason,
        pools=pools,
        gpus_before=gpus_before,
        gpus_after=gpus(counts, per_replica),
        gpu_budget=policy.gpu_budget,
        manual_changes=tuple(changed),
        manual_since=manual_since,
        prefill_capacity=capacity,
        prefill_queued=prefill_queued(obs),
        decode_capacity=decode_rate,
        notes=notes,
        scale_down_seconds={**_known_windows(history), **down_seconds},
    )


def _reason(
    pools: dict[str, PoolDecision],
    raw: dict[str, PoolSignals],
    changed: list[str],
    fixed: set[str],
    budget_notes: list[tuple[str | None, str]],
) -> str:
    if changed:
        return "ManualChangeYielded" if fixed.intersection(changed) else "ManualChangeReclaimed"
    ups = [p for p in pools.values() if p.desired > p.current]
    downs = [p for p in pools.values() if p.desired < p.current]
    if ups and downs:
        return "Rebalanced"
    if ups:
        return "ScaledUp"
    if downs:
        return "ScaledDown"
    if fixed:
        return "ManualChangeHeld"
    wanted_up = [p for p, d in pools.items() if raw[p].recommended > d.desired]
    wanted_down = [p for p, d in pools.items() if raw[p].recommended < d.desired]
    if wanted_up and budget_notes:
        return "BudgetLimited"
    if wanted_up:
        return "AtMaxReplicas"
    if wanted_down and any(d.stabilized > raw[p].recommended for p, d in pools.items()):
        return "Stabilizing"
    if wanted_down:
        return "AtMinReplicas"
    if any(r.starting_credit for r in raw.values()):
        return "StartingPods"
    if any(r.note == "NoReadyPods" for r in raw.values()):
        return "NoReadyPods"
    return "WithinTolerance"
