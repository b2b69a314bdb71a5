"""ServingDeployment status from the spec, the problems found and the children's status.

Definitions (the condition types are documented in api/status.py):
- a pool is "up" when its Deployment reports readyReplicas >= 1;
- Ready=True iff there are no problems, the router and decode pools are up, the prefill pool is
  up or has 0 desired replicas (decode-only on purpose), and the managed Redis (if any) is up.
  With prefill replicas > 0 a deployment whose prefill pool is down is NOT Ready: a silent
  decode-only fallback would otherwise look healthy;
- Progressing=True while any pool has fewer ready or updated replicas than desired, or its
  Deployment has not yet observed its latest generation;
- Degraded=True when a Problem blocks reconciliation, or a Deployment reports ReplicaFailure or
  ProgressDeadlineExceeded;
- Disaggregated=True iff prefill and decode are both up and KV moves between pods.
Messages are never empty: the Debian-built kube-apiserver 1.20 used in e2e/ reads "" in a custom
resource as null and rejects the status. `lastTransitionTime` only changes when a condition's status changes, so an unchanged world
yields an identical status (and no status write).
"""

from __future__ import annotations

from typing import Any

from ..api import ServingDeploymentSpec
from ..constants import ENGINE_PORT
from .checks import Problem


def pool_status(name: str, desired: int, live: dict[str, Any] | None) -> dict[str, Any]:
    status = (live or {}).get("status") or {}
    # The Deployment's own replicas win: the autoscaler (or kubectl scale) may have set them.
    desired = int(((live or {}).get("spec") or {}).get("replicas", desired))
    return {
        "name": name,
        "desiredReplicas": desired,
        "readyReplicas": int(status.get("readyReplicas") or 0),
        "updatedReplicas": int(status.get("updatedReplicas") or 0),
    }


def _deployment_failure(name: str, live: dict[str, Any] | None) -> str | None:
    for cond in ((live or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == "ReplicaFailure" and cond.get("status") == "True":
            return f"{name}: {cond.get('message') or cond.get('reason')}"
        if cond.get("type") == "Progressing" and cond.get("reason") == "ProgressDeadlineExceeded":
            return f"{name}: rollout exceeded its progress deadline ({cond.get('message', '')})"
    return None


def _stale(live: dict[str, Any] | None) -> bool:
    if live is None:
        return True
    observed = (live.get("status") or {}).get("observedGeneration")
    return observed is None or observed < live["metadata"].get("generation", 0)


def _cond(kind: str, status: bool | None, reason: str, message: str) -> dict[str, Any]:
    text = "Unknown" if status is None else ("True" if status else "False")
    return {"type": kind, "status": text, "reason": reason, "message": message}


def compute_conditions(
    spec: ServingDeploymentSpec | None,
    problems: list[Problem],
    pools: list[dict[str, Any]],
    children: dict[str, dict[str, Any] | None],
) -> list[dict[str, Any]]:
    """The four conditions without timestamps (see module docstring for the rules)."""
    if problems or spec is None:
        reason = problems[0].reason if problems else "InvalidSpec"
        message = "; ".join(p.message for p in problems)
        return [
            _cond("Ready", False, reason, f"not reconciled: {message}"),
            _cond("Progressing", False, "Blocked", "fix the spec problem reported by Degraded"),
            _cond("Degraded", True, reason, message),
            _cond("Disaggregated", None, reason, "unknown until the spec is fixed"),
        ]
    by_name = {p["name"]: p for p in pools}

    def up(name: str) -> bool:
        return by_name[name]["readyReplicas"] >= 1

    missing = [
        f"{p['name']} ({p['readyReplicas']}/{p['desiredReplicas']} ready)"
        for p in pools
        if not up(p["name"]) and not (p["name"] == "prefill" and p["desiredReplicas"] == 0)
    ]
    ready = _cond(
        "Ready", True, "AllPoolsReady", "router, decode and prefill pools have ready pods"
    )
    if missing:
        ready = _cond(
            "Ready", False, "PoolsNotReady", "waiting for ready pods in " + ", ".join(missing)
        )
    moving = [
        p["name"]
        for p in pools
        if p["readyReplicas"] < p["desiredReplicas"]
        or p["updatedReplicas"] < p["desiredReplicas"]
        or _stale(children.get(p["name"]))
    ]
    progressing = _cond("Progressing", False, "Complete", "every pool matches its spec")
    if moving:
        progressing = _cond("Progressing", True, "RollingOut", "updating " + ", ".join(moving))
    failures = [f for name, live in children.items() if (f := _deployment_failure(name, live))]
    degraded = _cond("Degraded", False, "AsExpected", "no problems found")
    if failures:
        degraded = _cond("Degraded", True, "PoolFailing", "; ".join(failures))
    kv = spec.engine.kv_transfer
    if spec.prefill.replicas == 0:
        disagg = _cond(
            "Disaggregated",
            False,
            "DecodeOnly",
            "prefill.replicas is 0: decode pods prefill every prompt",
        )
    elif kv.backend == "local":
        disagg = _cond(
            "Disaggregated", False, "LocalTransport", "KV backend local cannot cross pods"
        )
    elif up("prefill") and up("decode"):
        disagg = _cond(
            "Disaggregated", True, "PrefillAndDecodeReady", f"KV moves over {kv.backend}"
        )
    else:
        side = "prefill" if not up("prefill") else "decode"
        disagg = _cond("Disaggregated", False, "PoolUnavailable", f"no ready {side} pod")
    return [ready, progressing, degraded, disagg]


def with_transitions(
    conditions: list[dict[str, Any]],
    previous: list[dict[str, Any]],
    now: str,
    generation: int | None,
) -> list[dict[str, Any]]:
    """Add lastTransitionTime (kept when the status did not flip) and observedGeneration."""
    before = {c.get("type"): c for c in previous or []}
    out = []
    for cond in conditions:
        old = before.get(cond["type"])
        same = old is not None and old.get("status") == cond["status"]
        stamped = dict(cond, lastTransitionTime=old["lastTransitionTime"] if same else now)
        if generation is not None:
            stamped["observedGeneration"] = generation
        out.append(stamped)
    return out


def endpoint(name: str, namespace: str) -> str:
    return f"http://{name}-router.{namespace}.svc:{ENGINE_PORT}"


def compute_status(
    body: dict[str, Any],
    spec: ServingDeploymentSpec | None,
    problems: list[Problem],
    children: dict[str, dict[str, Any] | None],
    now: str,
) -> dict[str, Any]:
    """The status fields this reconciler owns (lastScalingDecision belongs to the autoscaler)."""
    meta, previous = body["metadata"], body.get("status") or {}
    generation = meta.get("generation")
    pools: list[dict[str, Any]] = []
    if spec is not None:
        pools = [
            pool_status("prefill", spec.prefill.replicas, children.get("prefill")),
            pool_status("decode", spec.decode.replicas, children.get("decode")),
            pool_status("router", spec.router.replicas, children.get("router")),
        ]
        if spec.engine.kv_transfer.managed_redis:
            pools.append(pool_status("redis", 1, children.get("redis")))
    conditions = compute_conditions(spec, problems, pools, children)
    return {
        "observedGeneration": generation,
        "conditions": with_transitions(conditions, previous.get("conditions"), now, generation),
        "pools": pools or previous.get("pools", []),
        # With an invalid spec the children are left as they were, and so is their endpoint.
        "endpoint": endpoint(meta["name"], meta["namespace"])
        if spec is not None
        else previous.get("endpoint"),
    }
