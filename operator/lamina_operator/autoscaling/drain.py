"""Drained scale-in as pure steps: which pod goes, and what a drain does at each look.

A pool shrinks by one drained pod at a time (at most one drain per pool):
1. start: the least busy ready pod is told to drain (POST /v1/admin/drain on its internal
   port): /health turns 503 (the kubelet takes it out of the Service), the router stops
   sending it work, its requests in flight finish. From then on the pool counts one replica
   fewer (`Drain.effective`): that is what `decide` sees and what the history records;
2. each look (GET): when in_flight and kv_pending are both 0, or the policy's drain timeout
   passed (Warning), or the pod is gone: remove it: its pod-deletion-cost becomes the lowest
   and the Deployment's replicas one fewer (stage Removing). A not-ready pod is the
   ReplicaSet's first choice anyway; the cost covers the moments before the kubelet saw it;
3. Removing: done once the pod is gone or terminating. Still there a while later (the
   ReplicaSet removed another pod, e.g. mid-rollout): undrain it, it serves again.
A drain is cancelled (DELETE: the pod serves again) when `decide` wants more replicas than
the pool counts without it, or when someone else changed the Deployment's replicas.
Starting (not ready) pods need no drain: lowering replicas removes them first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from .observation import PodSample

LOWEST_DELETION_COST = str(-(2**31))  # pod-deletion-cost is an int32
REMOVAL_GRACE_SECONDS = 30.0  # replicas lowered, yet the pod still not terminating after this


@dataclass(frozen=True)
class Drain:
    pool: str
    pod: str
    uid: str
    started: float  # seconds (the autoscaler's clock)
    replicas: int  # the Deployment's replicas while draining; one fewer once removed
    stage: str = "Draining"  # Draining | Removing
    in_flight: int = 0
    kv_pending: int = 0
    removing_since: float | None = None

    @property
    def effective(self) -> int:
        """The pool's replicas not counting the drained pod."""
        return self.replicas - 1


@dataclass(frozen=True)
class DrainReport:
    """What the pod answered: GET/POST/DELETE /v1/admin/drain."""

    draining: bool
    in_flight: int
    kv_pending: int


@dataclass(frozen=True)
class PodState:
    """What the API server says about the drained pod."""

    exists: bool
    terminating: bool = False
    # The kubelet still reports it Ready: its readiness probe (/health, 503 while draining) has
    # not failed enough times yet. The ReplicaSet deletes not-ready pods first; among ready pods,
    # before 1.22 (no pod-deletion-cost) it deletes the most recently ready one, maybe not this.
    ready: bool = False


@dataclass(frozen=True)
class Step:
    """What to do with a drain now. action: wait | redrain | remove | cancel | done."""

    action: str
    drain: Drain  # the drain as it is after this look (counts updated)
    reason: str = ""  # the Event's reason (one CamelCase word); "" posts no Event
    message: str = ""
    warning: bool = False


def busyness(pod: PodSample) -> tuple[float, float, str]:
    """Requests running and waiting, then KV use: the least is the cheapest pod to drain."""
    return (pod.running + pod.waiting_requests, pod.kv_utilization, pod.name)


def pick(pods: Sequence[PodSample]) -> PodSample | None:
    return min(pods, key=busyness, default=None)


def shrink_plan(current: int, desired: int, starting: int) -> tuple[int, bool]:
    """(replicas to lower at once, whether one ready pod must be drained as well).

    Pods not yet ready are the ReplicaSet's first choice and hold no work: they go at once.
    The rest of the reduction is one drained pod now; `decide` asks again for more later."""
    if desired >= current:
        return 0, False
    at_once = min(current - desired, starting)
    return at_once, current - desired > at_once


def advance(
    drain: Drain,
    *,
    now: float,
    timeout: float,
    deployment_replicas: int,
    pod: PodState,
    report: DrainReport | None,
    error: str | None = None,
) -> Step:
    """One look at a drain. `report`/`error`: the pod's answer to GET, or why there is none
    (both None in the Removing stage: the pod is not asked)."""
    if drain.stage == "Removing":
        return _removing(drain, now, deployment_replicas, pod)
    pool, name = drain.pool, drain.pod
    if deployment_replicas != drain.replicas:
        return Step("cancel", drain, "DrainCancelled",
                    f"{pool} replicas were changed to {deployment_replicas} by someone else "
                    f"while {name} drained: {name} serves again", warning=True)  # fmt: skip
    if not pod.exists or pod.terminating:
        return Step("remove", drain, "DrainPodGone",
                    f"{name} went away while draining: {pool} replicas "
                    f"{drain.replicas}->{drain.effective}")  # fmt: skip
    if report is not None:
        drain = replace(drain, in_flight=report.in_flight, kv_pending=report.kv_pending)
    waited = now - drain.started
    if report is not None and not report.draining:
        return Step("redrain", drain, "DrainRestarted",
                    f"{name} was no longer draining (restarted or undrained by someone "
                    "else): drained again", warning=True)  # fmt: skip
    idle = report is not None and report.in_flight == 0 and report.kv_pending == 0
    if idle and not pod.ready:
        return Step("remove", drain, "Drained",
                    f"{name} drained in {waited:.0f}s: {pool} replicas "
                    f"{drain.replicas}->{drain.effective}")  # fmt: skip
    if waited >= timeout:
        left = (
            f"unreachable ({error})"
            if error is not None
            else "its work done but still Ready (readiness probe not failed)"
            if idle
            else f"{drain.in_flight} requests and {drain.kv_pending} KV transfers unfinished"
        )
        return Step("remove", drain, "DrainTimedOut",
                    f"{name} not drained after {timeout:.0f}s, {left}: removed anyway, "
                    f"{pool} replicas {drain.replicas}->{drain.effective}",
                    warning=True)  # fmt: skip
    return Step("wait", drain)


def on_demand(drain: Drain, wanted: int) -> Step | None:
    """`decide` wants `wanted` replicas for the drain's pool (counted without the drained pod):
    more than that cancels the drain; the same or fewer lets it go on (a larger scale-in goes
    on one drain at a time)."""
    if wanted <= drain.effective:
        return None
    return Step("cancel", drain, "DrainCancelled",
                f"demand rose ({drain.pool} wants {wanted}, {drain.effective} without "
                f"{drain.pod}): {drain.pod} serves again")  # fmt: skip


def _removing(drain: Drain, now: float, deployment_replicas: int, pod: PodState) -> Step:
    if not pod.exists or pod.terminating:
        return Step("done", drain)
    name = drain.pod
    if deployment_replicas != drain.effective:
        return Step("cancel", drain, "DrainCancelled",
                    f"{drain.pool} replicas were changed to {deployment_replicas} by someone "
                    f"else before {name} was removed: it serves again", warning=True)  # fmt: skip
    since = drain.removing_since if drain.removing_since is not None else now
    if now - since >= REMOVAL_GRACE_SECONDS:
        return Step("cancel", drain, "DrainedPodKept",
                    f"{drain.pool} replicas were lowered but {name} was not removed after "
                    f"{now - since:.0f}s (another pod went, e.g. during a rollout): it serves "
                    "again", warning=True)  # fmt: skip
    return Step("wait", drain)
