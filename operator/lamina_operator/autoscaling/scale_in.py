"""Drained scale-in, the I/O around drain.py: pods' drain endpoints, pod annotations, replicas.

Per ServingDeployment, at most one Drain per pool, kept in memory and in
status.autoscaling.drains (an operator restarted mid-drain carries on from there). Each look
(every timer tick while a drain runs, not only at evaluations) asks the pod how far it is and
acts on drain.advance's Step. A pod whose drain endpoint cannot be used (unreachable, an old
image, a refused key) is not drained: the scale-in falls back to pod-deletion-cost by in-flight
work and SIGTERM (the engine drains itself on SIGTERM for up to 60 s), with a Warning Event
saying why.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ..api import AutoscalingPolicySpec
from ..kube import KubeClient, KubeError
from ..reconcile import EventRecorder
from .cluster_view import admin_url, format_time, parse_time
from .drain import (
    LOWEST_DELETION_COST,
    Drain,
    PodState,
    Step,
    advance,
    on_demand,
    pick,
    shrink_plan,
)
from .drain_client import DrainClient, DrainError, internal_key
from .observation import PoolObservation
from .scrape import PodTarget

DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
Key = tuple[str, str]


def drain_record(drain: Drain) -> dict[str, Any]:
    return {
        "pool": drain.pool, "pod": drain.pod, "uid": drain.uid,
        "started": format_time(drain.started), "replicas": drain.replicas,
        "stage": drain.stage, "inFlight": drain.in_flight, "kvPending": drain.kv_pending,
    }  # fmt: skip


def from_record(record: dict[str, Any], now: float) -> Drain | None:
    started = parse_time(record.get("started"))
    if started is None or record.get("pool") not in ("prefill", "decode"):
        return None
    stage = record.get("stage", "Draining")
    return Drain(
        record["pool"], record["pod"], record.get("uid", ""), started, int(record["replicas"]),
        stage, int(record.get("inFlight", 0)), int(record.get("kvPending", 0)),
        removing_since=now if stage == "Removing" else None,
    )  # fmt: skip


class ScaleIn:
    """The drains of every ServingDeployment this operator scales."""

    def __init__(self, client: KubeClient, recorder: EventRecorder, http: DrainClient | None):
        self.client, self.recorder = client, recorder
        self.http = http if http is not None else DrainClient()
        self.drains: dict[Key, dict[str, Drain]] = {}
        self.recorded: dict[Key, list[dict[str, Any]]] = {}  # what status says now

    # -- state ------------------------------------------------------------------------------
    def restore(self, key: Key, autoscaling: dict[str, Any], now: float) -> None:
        """After an operator restart: the drains status recorded."""
        if key in self.drains:
            return
        records = list(autoscaling.get("drains") or [])
        drains = [d for r in records if (d := from_record(r, now)) is not None]
        self.drains[key] = {d.pool: d for d in drains}
        self.recorded[key] = records

    def of(self, key: Key) -> dict[str, Drain]:
        return self.drains.setdefault(key, {})

    def forget(self, key: Key) -> None:
        self.drains.pop(key, None)
        self.recorded.pop(key, None)

    def status_patch(self, key: Key) -> list[dict[str, Any]] | None:
        """status.autoscaling.drains when it differs from what was last written, else None."""
        records = [drain_record(d) for _, d in sorted(self.of(key).items())]
        if records == self.recorded.get(key, []):
            return None
        self.recorded[key] = records
        return records

    # -- I/O helpers ------------------------------------------------------------------------
    def _key(self, body: dict[str, Any]) -> str | None:
        meta = body["metadata"]
        return internal_key(meta["namespace"], meta["name"], meta.get("uid", ""))

    def _pod(self, namespace: str, drain: Drain) -> tuple[PodState, dict[str, Any] | None]:
        pod = self.client.get("v1", "Pod", namespace, drain.pod)
        if pod is None or (drain.uid and pod["metadata"].get("uid") not in (None, drain.uid)):
            return PodState(False), None  # gone (a new pod of the same name is another pod)
        conds = (pod.get("status") or {}).get("conditions") or []
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds)
        return PodState(True, bool(pod["metadata"].get("deletionTimestamp")), ready), pod

    def _event(self, body: dict[str, Any], step: Step) -> None:
        if step.reason:
            self.recorder.event(body, "Warning" if step.warning else "Normal", step.reason,
                                step.message)  # fmt: skip

    def _replicas(self, body: dict[str, Any], pool: str, deployment: dict, n: int) -> None:
        meta = body["metadata"]
        self.client.patch("apps/v1", "Deployment", meta["namespace"], f"{meta['name']}-{pool}",
                          {"spec": {"replicas": n}})  # fmt: skip
        deployment.setdefault("spec", {})["replicas"] = n  # the caller's view stays current

    def _cost(self, namespace: str, pod: str, cost: str) -> None:
        try:
            self.client.patch("v1", "Pod", namespace, pod,
                              {"metadata": {"annotations": {DELETION_COST: cost}}})  # fmt: skip
        except KubeError as exc:
            if exc.status != 404:  # a pod already gone needs no cost
                raise

    # -- drains in progress -----------------------------------------------------------------
    def look(
        self,
        body: dict[str, Any],
        policy: AutoscalingPolicySpec,
        deployments: dict[str, dict[str, Any]],
        now: float,
    ) -> None:
        """Advance every drain of this deployment one step (patches `deployments` in place)."""
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        for pool, drain in list(self.of(key).items()):
            state, pod = self._pod(meta["namespace"], drain)
            report = error = None
            if drain.stage == "Draining" and state.exists and not state.terminating:
                try:
                    report = self.http.status(admin_url(pod), self._key(body))
                except DrainError as exc:
                    error = str(exc)
            replicas = int(deployments[pool].get("spec", {}).get("replicas", 1))
            step = advance(drain, now=now, timeout=policy.drain.timeout_seconds,
                           deployment_replicas=replicas, pod=state, report=report,
                           error=error)  # fmt: skip
            self.act(body, step, pod, deployments, now)

    def wanted(
        self, body: dict[str, Any], pool: str, desired: int, deployments: dict, now: float
    ) -> int | None:
        """`decide` wants `desired` for a pool with a drain: a rise cancels the drain. Returns
        the pool's replicas afterwards, or None when there is no drain (the caller scales)."""
        meta = body["metadata"]
        drain = self.of((meta["namespace"], meta["name"])).get(pool)
        if drain is None:
            return None
        step = on_demand(drain, desired)
        if step is None:
            return drain.effective  # more scale-in waits for this drain
        _, pod = self._pod(meta["namespace"], drain)
        self.act(body, step, pod, deployments, now)
        if desired != int(deployments[pool]["spec"]["replicas"]):
            self._replicas(body, pool, deployments[pool], desired)
        return desired

    def act(
        self, body: dict[str, Any], step: Step, pod: dict | None, deployments: dict, now: float
    ) -> None:
        meta = body["metadata"]
        key, drain = (meta["namespace"], meta["name"]), step.drain
        drains = self.of(key)
        self._event(body, step)
        if step.action in ("wait", "redrain"):
            if step.action == "redrain" and pod is not None:
                try:
                    self.http.start(admin_url(pod), self._key(body))
                except DrainError:
                    pass  # asked again at the next look; the timeout bounds it
            drains[drain.pool] = drain
        elif step.action == "remove":
            if pod is not None:
                self._cost(meta["namespace"], drain.pod, LOWEST_DELETION_COST)
            deployment = deployments[drain.pool]
            if int(deployment["spec"]["replicas"]) == drain.replicas:
                self._replicas(body, drain.pool, deployment, drain.effective)
            drains[drain.pool] = replace(drain, stage="Removing", removing_since=now)
        elif step.action == "cancel":
            if pod is not None and not pod["metadata"].get("deletionTimestamp"):
                try:
                    self.http.cancel(admin_url(pod), self._key(body))
                except DrainError as exc:
                    self.recorder.event(body, "Warning", "UndrainFailed",
                                        f"{drain.pod} could not be told to serve again: {exc}; "
                                        "its readiness stays false until it is restarted or "
                                        "removed")  # fmt: skip
            drains.pop(drain.pool, None)
        else:  # done
            drains.pop(drain.pool, None)

    # -- a new scale-in ---------------------------------------------------------------------
    def shrink(
        self,
        body: dict[str, Any],
        pool: str,
        desired: int,
        observed: PoolObservation,
        targets: dict[str, PodTarget],
        deployments: dict,
        now: float,
    ) -> int:
        """Scale a pool without a drain in. Returns its replicas as `decide` should count them
        (the Deployment's, less the pod being drained)."""
        meta = body["metadata"]
        current = observed.desired
        at_once, drain_one = shrink_plan(current, desired, observed.starting)
        replicas = current - at_once
        if drain_one:
            why = "no ready pod of the pool was measured"
            candidate = pick([p for p in observed.pods if p.name in targets])
            if candidate is not None:
                target = targets[candidate.name]
                try:
                    report = self.http.start(target.admin_url, self._key(body))
                except DrainError as exc:
                    why = str(exc)
                else:
                    drain = Drain(pool, target.name, target.uid, now, replicas,
                                  in_flight=report.in_flight, kv_pending=report.kv_pending)  # fmt: skip
                    self.of((meta["namespace"], meta["name"]))[pool] = drain
                    self.recorder.event(body, "Normal", "DrainStarted",
                                        f"{target.name} (the least busy {pool} pod: "
                                        f"{candidate.running:.0f} running, "
                                        f"{candidate.waiting_requests:.0f} waiting) drains "
                                        f"before {pool} goes {replicas}->{drain.effective}; "
                                        f"{report.in_flight} requests in flight")  # fmt: skip
                    if replicas != current:
                        self._replicas(body, pool, deployments[pool], replicas)
                    return drain.effective
            self.recorder.event(body, "Warning", "DrainUnavailable",
                                f"{pool} {current}->{desired} without a drain: {why}; the "
                                "least busy pods go first (pod-deletion-cost) and drain on "
                                "SIGTERM")  # fmt: skip
            for pod in observed.pods:
                self._cost(
                    meta["namespace"], pod.name, str(int(pod.running + pod.waiting_requests))
                )
            replicas = desired
        if replicas != current:
            self._replicas(body, pool, deployments[pool], replicas)
        return replicas

    def cancel_all(self, body: dict[str, Any], why: str, deployments: dict, now: float) -> None:
        """Autoscaling turned off or advisory mid-drain: the drained pods serve again."""
        meta = body["metadata"]
        for drain in list(self.of((meta["namespace"], meta["name"])).values()):
            _, pod = self._pod(meta["namespace"], drain)
            self.act(body, Step("cancel", drain, "DrainCancelled",
                                f"{why}: {drain.pod} serves again"), pod, deployments, now)  # fmt: skip
