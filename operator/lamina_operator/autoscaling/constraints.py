"""Deployment-wide constraints on the two pools together: the P:D ratio and the GPU budget.

Both work on {pool: replicas} after each pool was clamped to its own min/max, and return the
new counts plus one note per change. Pools in `fixed` (a manual change being yielded to) are
never moved.

Ratio (prefill/decode in percent, within [min, max]): the lagging pool is raised (scaling up is
the safe direction); only when that pool is at its max is the leading pool lowered.
Budget (sum of replicas * GPUs per replica): while over it, take one replica from the pool that
would stay furthest *below* its targets without it (lowest projected pressure), so replicas
move to the pool furthest from its SLO; then, while GPUs are left, give one back to the pool
with the highest projected pressure (up to what it asked for; with keepGpuTotal, beyond). Projected pressure of a pool at n replicas is its largest
signal ratio scaled by ready/n (load spreads over the pods). Moves that would break the ratio
bounds are skipped while another move exists.
"""

from __future__ import annotations

import math

from ..api import AutoscalingPolicySpec

Counts = dict[str, int]
Note = tuple[str | None, str]  # (the pool it changed, or None for the whole deployment; text)


def _bounds(policy: AutoscalingPolicySpec, pool: str) -> tuple[int, int]:
    b = getattr(policy, pool)
    return b.min_replicas, b.max_replicas


def ratio_ok(policy: AutoscalingPolicySpec, p: int, d: int) -> bool:
    r = policy.prefill_to_decode_ratio
    if d == 0:
        return p == 0
    return r.min_percent * d <= 100 * p <= r.max_percent * d


def enforce_ratio(
    policy: AutoscalingPolicySpec, counts: Counts, fixed: set[str]
) -> tuple[Counts, list[Note]]:
    r = policy.prefill_to_decode_ratio
    p, d = counts["prefill"], counts["decode"]
    notes: list[Note] = []
    if d == 0 or ratio_ok(policy, p, d):
        return counts, notes
    if 100 * p < r.min_percent * d:  # too few prefill
        need = math.ceil(r.min_percent * d / 100)
        top = _bounds(policy, "prefill")[1]
        if "prefill" not in fixed and min(need, top) > p:
            notes.append(
                ("prefill", f"ratio: prefill {p}->{min(need, top)} (min {r.min_percent}%)")
            )
            p = min(need, top)
        if 100 * p < r.min_percent * d and "decode" not in fixed:
            low = max(_bounds(policy, "decode")[0], 1)
            new_d = max(low, math.floor(100 * p / r.min_percent)) if r.min_percent else d
            if new_d < d:
                notes.append(("decode", f"ratio: decode {d}->{new_d} (prefill at its max)"))
                d = new_d
    else:  # too many prefill per decode
        need = math.ceil(100 * p / r.max_percent) if r.max_percent else d
        top = _bounds(policy, "decode")[1]
        if "decode" not in fixed and min(need, top) > d:
            notes.append(("decode", f"ratio: decode {d}->{min(need, top)} (max {r.max_percent}%)"))
            d = min(need, top)
        if 100 * p > r.max_percent * d and "prefill" not in fixed:
            new_p = max(_bounds(policy, "prefill")[0], math.floor(r.max_percent * d / 100))
            if new_p < p:
                notes.append(("prefill", f"ratio: prefill {p}->{new_p} (decode at its max)"))
                p = new_p
    if not ratio_ok(policy, p, d):
        notes.append((None, f"ratio: {p}:{d} stays outside [{r.min_percent}%, {r.max_percent}%]"))
    return {"prefill": p, "decode": d}, notes


def gpus(counts: Counts, per_replica: dict[str, int]) -> int:
    return sum(n * per_replica.get(pool, 0) for pool, n in counts.items())


def enforce_budget(
    policy: AutoscalingPolicySpec,
    counts: Counts,
    per_replica: dict[str, int],
    pressure: dict[str, tuple[float, int]],  # pool -> (largest signal ratio, ready pods)
    fixed: set[str],
    current: Counts,
) -> tuple[Counts, list[Note]]:
    budget = policy.gpu_budget
    if budget is None:
        return counts, []
    counts = dict(counts)
    before = dict(counts)
    # Hysteresis: a pool's replicas as they are now weigh `tolerance` more than a move, so
    # pressures within the tolerance band do not trade a replica back and forth each interval.
    bias = 1 + policy.tolerance_percent / 100

    def keep(pool: str, n: int) -> float:
        return bias if n <= current.get(pool, 0) else 1.0

    def projected(pool: str, n: int) -> float:
        ratio, ready = pressure.get(pool, (0.0, 0))
        return ratio * ready / n if n > 0 else math.inf

    def movable(pool: str, delta: int) -> bool:
        if pool in fixed or per_replica.get(pool, 0) == 0:
            return False
        low, high = _bounds(policy, pool)
        return low <= counts[pool] + delta <= high

    def keeps_ratio(pool: str, delta: int) -> bool:
        trial = dict(counts)
        trial[pool] += delta
        return ratio_ok(policy, trial["prefill"], trial["decode"])

    notes: list[Note] = []
    while gpus(counts, per_replica) > budget:
        options = [p for p in counts if movable(p, -1)]
        if not options:
            notes.append(
                (None, f"budget: {gpus(counts, per_replica)} GPUs > {budget} at the minimums")
            )
            break
        options.sort(
            key=lambda p: (not keeps_ratio(p, -1), projected(p, counts[p] - 1) * keep(p, counts[p]))
        )
        counts[options[0]] -= 1
    # Refill what a coarse removal freed (pools differ in GPUs per replica), up to what each
    # pool asked for; with keepGpuTotal, on up to the budget.
    while True:
        room = budget - gpus(counts, per_replica)
        options = [
            p
            for p in counts
            if movable(p, +1)
            and per_replica[p] <= room
            and keeps_ratio(p, +1)
            and (policy.keep_gpu_total or counts[p] < before[p])
        ]
        if not options:
            break
        options.sort(key=lambda p: -projected(p, counts[p]) * keep(p, counts[p] + 1))
        counts[options[0]] += 1
    for pool in counts:
        if counts[pool] != before[pool]:
            notes.append((pool, f"budget: {pool} {before[pool]}->{counts[pool]}"))
    return counts, notes
