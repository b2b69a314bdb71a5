"""The autoscaler's status on a ServingDeployment: decision records, conditions, memory.

status.autoscaling keeps the last historyLimit recorded decisions (each: time, per pool
before/after/recommended, reason, the message with every input and clamp), two conditions and
what `decide` must remember across operator restarts (manual-change holds, the learned prefill
and decode capacities, the scale-down windows learned past the policy's). A decision is
recorded when it changes replicas (or would, in advisory mode), when someone else changed a
pool, or when its reason differs from the last record: the steady "WithinTolerance" of every
interval is not written again and again.
"""

from __future__ import annotations

from typing import Any

from ..reconcile.status import with_transitions
from .cluster_view import format_time, parse_time
from .decision import Decision, HistoryEntry
from .observation import POOLS


def is_news(decision: Decision, previous: list[dict[str, Any]]) -> bool:
    """Replicas change now, or (advisory) the advice differs from the last recorded one."""
    if decision.mode == "active" or not previous:
        return decision.changed
    last = {p["name"]: p["after"] for p in previous[-1].get("pools") or []}
    return decision.changed and last != decision.desired()


def worth_recording(decision: Decision, previous: list[dict[str, Any]]) -> bool:
    if is_news(decision, previous) or decision.manual_changes or not previous:
        return True
    return previous[-1].get("reason") != decision.reason


def decision_record(
    decision: Decision, applied: bool, written: dict[str, int] | None = None
) -> dict[str, Any]:
    """`written`: each pool's replicas as the autoscaler left them (a pool draining a pod
    counts one fewer; a larger scale-in continues one drain at a time)."""
    after = written if applied and written else decision.desired()
    return {
        "time": format_time(decision.time),
        "reason": decision.reason,
        "applied": applied,
        "pools": [
            {
                "name": pool,
                "before": p.current,
                "after": after[pool],
                "recommended": p.recommended,
                "ready": p.ready,
                "starting": p.starting,
            }
            for pool, p in decision.pools.items()
        ],  # fmt: skip
        "message": decision.message()[:2000],
    }


def conditions(decision: Decision, previous: list[dict[str, Any]], now: str) -> list[dict]:
    if decision.reason == "MetricsUnavailable":
        active = ("False", "MetricsUnavailable", "; ".join(decision.notes) or "metrics unread")
    elif decision.mode == "advisory":
        active = ("False", "Advisory", "mode advisory: decisions are reported, not applied")
    else:
        active = ("True", "Active", "decisions are applied to the pools")
    if decision.manual_since:
        pools = ", ".join(sorted(decision.manual_since))
        manual = (
            "True",
            "Yielding",
            f"replicas of {pools} were changed by someone else; "
            "the autoscaler leaves them until the policy's manualChange.holdSeconds pass",
        )
    elif decision.manual_changes:
        manual = (
            "True",
            "Reclaimed",
            f"replicas of {', '.join(decision.manual_changes)} were "
            "changed by someone else and set back (manualChange.action reclaim)",
        )
    else:
        manual = ("False", "NoManualChange", "the pools have the replicas the autoscaler set")
    conds = [
        {"type": "ScalingActive", "status": active[0], "reason": active[1], "message": active[2]},
        {"type": "ManualChange", "status": manual[0], "reason": manual[1], "message": manual[2]},
    ]  # fmt: skip
    return with_transitions(conds, previous, now, None)


def status(
    decision: Decision,
    policy_name: str,
    limit: int,
    previous: dict[str, Any],
    applied: bool,
    written: dict[str, int] | None = None,
    base_window: float | None = None,
) -> dict[str, Any]:
    """`base_window`: the policy's scale-down window; only windows learned past it are kept
    (the rest is the policy's, read again at every evaluation)."""
    records = list(previous.get("decisions") or []) + [decision_record(decision, applied, written)]
    now = format_time(decision.time)
    out: dict[str, Any] = {
        "mode": decision.mode,
        "policy": policy_name,
        "lastDecisionTime": now,
        "conditions": conditions(decision, previous.get("conditions") or [], now),
        "decisions": records[-limit:],
        # a merge patch: pools no longer held are removed with null
        "manualSince": {
            pool: format_time(decision.manual_since[pool])
            if pool in decision.manual_since
            else None
            for pool in set(decision.manual_since) | set(previous.get("manualSince") or {})
        },
    }
    learned = {
        pool: int(seconds)
        for pool, seconds in decision.scale_down_seconds.items()
        if base_window is None or seconds > base_window
    }
    # a merge patch: a pool whose window is the policy's again is removed with null
    out["scaleDownWindowSeconds"] = {
        pool: learned.get(pool)
        for pool in set(learned) | set(previous.get("scaleDownWindowSeconds") or {})
    }
    if decision.prefill_capacity is not None:
        out["prefillCapacityTokensPerSecond"] = int(decision.prefill_capacity)
    if decision.decode_capacity is not None:
        out["decodeCapacityTokensPerSecond"] = int(decision.decode_capacity)
    if decision.prefill_queued is not None:
        out["prefillQueuedTokens"] = int(decision.prefill_queued)
    return out


def history(previous: dict[str, Any]) -> list[HistoryEntry]:
    """Rebuild decide's history from status (after an operator restart): the recorded
    decisions only, so windows are shorter than they were; decide then assumes the replicas it
    finds were recommended throughout, which only delays a scale-down. The memory (holds,
    capacities, learned scale-down windows) goes on the last entry, where decide reads it."""
    out = []
    for record in previous.get("decisions") or []:
        t = parse_time(record.get("time"))
        pools = {p["name"]: p for p in record.get("pools") or []}
        if t is None or set(pools) != set(POOLS):
            continue
        after = {name: int(p["after"]) for name, p in pools.items()}
        out.append(HistoryEntry(
            time=t,
            recommended={name: int(p["recommended"]) for name, p in pools.items()},
            applied=after if record.get("applied") else None,
        ))  # fmt: skip
    if out:
        since = {
            pool: t for pool, stamp in (previous.get("manualSince") or {}).items()
            if (t := parse_time(stamp)) is not None
        }  # fmt: skip
        capacity = previous.get("prefillCapacityTokensPerSecond")
        queued = previous.get("prefillQueuedTokens")
        decode_capacity = previous.get("decodeCapacityTokensPerSecond")
        windows = {
            pool: float(seconds)
            for pool, seconds in (previous.get("scaleDownWindowSeconds") or {}).items()
            if pool in POOLS and seconds is not None
        }
        last = out[-1]
        out[-1] = HistoryEntry(
            last.time, last.recommended, last.applied, since,
            float(capacity) if capacity is not None else None,
            float(queued) if queued is not None else None,
            scale_down_seconds=windows,
            decode_capacity=float(decode_capacity) if decode_capacity is not None else None,
        )  # fmt: skip
    return out
