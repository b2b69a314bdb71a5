"""One autoscaler evaluation of a ServingDeployment: read, decide, apply or report, record.

Called by the kopf timer every few seconds for every ServingDeployment; it acts when the
policy's evaluationIntervalSeconds have passed since its last evaluation of that deployment.
The policy is read on every evaluation (inline, or the AutoscalingPolicy named by policyRef),
so a changed shared policy takes effect on every deployment using it at its next evaluation,
without restarts. Between evaluations a tick makes no API call. Steps:
1. the spec, the policy and the two pool Deployments (nothing to do without them: the
   reconciler reports why);
2. metrics of the ready prefill, decode and router pods (scrape.py), directly or through the
   policy's Prometheus; failures become Observation.metrics_error (decide then holds);
3. decide(policy, observation, history);
4. active mode: patch spec.replicas of each pool whose replicas change; advisory: nothing;
5. an Event per recorded decision that changes (or would change) replicas, a Warning Event per
   manual change, status.autoscaling (record.py) and the lamina_autoscaler_* metrics.
Scale-in first sets each ready pod's pod-deletion-cost to its in-flight work, then lowers
spec.replicas: the ReplicaSet removes the least busy pods, which drain on SIGTERM (the engine
refuses new requests and finishes those in flight). It is not the full drain (mark draining,
wait, then remove): docs/autoscaling.md says what is missing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from .. import metrics
from ..api import AutoscalingPolicySpec
from ..constants import API_VERSION, POLICY_KIND, SERVING_KIND
from ..kube import KubeClient
from ..reconcile import EventRecorder
from ..reconcile.checks import parse_policy, parse_spec
from . import cluster_view, record
from .decide import decide
from .decision import Decision, HistoryEntry
from .observation import POOLS, Observation, PoolObservation, RouterSample, merge
from .scrape import MetricsError, PodScraper, PrometheusReader

HISTORY_SECONDS = 3600 * 2  # longest stabilisation window (1 h) with room
DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
NO_POLICY_RECHECK_SECONDS = 60  # autoscaling off or its policy missing: look again this often


class Autoscaler:
    """Per-process state: each deployment's decision history and each pod's last scrape."""

    def __init__(
        self,
        client: KubeClient,
        recorder: EventRecorder,
        clock: Callable[[], float] = time.time,
    ):
        self.client, self.recorder, self.clock = client, recorder, clock
        # per deployment: the last scrape of each of its pods (rates need two)
        self.scrapers: dict[tuple[str, str], PodScraper] = {}
        self.histories: dict[tuple[str, str], list[HistoryEntry]] = {}
        self.last_run: dict[tuple[str, str], float] = {}
        # seconds until the next look: the policy's interval (no API call before it is due)
        self.intervals: dict[tuple[str, str], float] = {}

    def policy_for(
        self, namespace: str, spec_raw: dict[str, Any]
    ) -> tuple[AutoscalingPolicySpec | None, str]:
        spec, problems = parse_spec(spec_raw)
        auto = spec.autoscaling if spec is not None and not problems else None
        if auto is None or not auto.enabled:
            return None, ""
        if auto.policy is not None:
            return auto.policy, "inline"
        body = self.client.get(API_VERSION, POLICY_KIND, namespace, auto.policy_ref.name)
        if body is None:
            return None, auto.policy_ref.name
        policy, _ = parse_policy(body.get("spec"))
        return policy, auto.policy_ref.name

    def evaluate(self, namespace: str, name: str, force: bool = False) -> Decision | None:
        """Evaluate if due (or `force`); None when there is nothing to evaluate yet."""
        key, now = (namespace, name), self.clock()
        last, interval = self.last_run.get(key), self.intervals.get(key)
        if not force and last is not None and interval is not None and now - last < interval:
            return None
        body = self.client.get(API_VERSION, SERVING_KIND, namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            self.histories.pop(key, None)
            self.scrapers.pop(key, None)
            return None
        policy, policy_name = self.policy_for(namespace, body.get("spec") or {})
        if policy is None:  # no autoscaling, or a policy problem the reconciler reports
            self.last_run[key], self.intervals[key] = now, NO_POLICY_RECHECK_SECONDS
            return None
        self.intervals[key] = policy.evaluation_interval_seconds
        previous = (body.get("status") or {}).get("autoscaling") or {}
        if last is None:  # a restarted operator: continue the deployment's rhythm
            last = cluster_view.parse_time(previous.get("lastDecisionTime"))
        if not force and last is not None and now - last < policy.evaluation_interval_seconds:
            return None
        spec, _ = parse_spec(body.get("spec"))
        deployments = {
            pool: self.client.get("apps/v1", "Deployment", namespace, f"{name}-{pool}")
            for pool in POOLS
        }
        if any(d is None for d in deployments.values()):
            return None  # the reconciler has not created the pools yet
        self.last_run[key] = now
        obs = self._observe(namespace, name, spec, policy, deployments, now)
        if obs.metrics_error:
            metrics.autoscaler_metrics_errors_total.labels(namespace, name).inc()
        history = self.histories.get(key)
        if history is None:
            history = record.history(previous)
        decision = decide(policy, obs, history)
        applied = decision.mode == "active"
        if decision.apply:
            for pool, p in decision.pools.items():
                if p.desired < p.current:
                    self._deletion_costs(namespace, obs.pools[pool])
                if p.desired != p.current:
                    self.client.patch("apps/v1", "Deployment", namespace, f"{name}-{pool}",
                                      {"spec": {"replicas": p.desired}})  # fmt: skip
        entry = decision.history_entry(applied=applied and obs.metrics_error is None)
        if obs.metrics_error:  # nothing was decided: keep the previous expectations
            entry = HistoryEntry(entry.time, entry.recommended, history[-1].applied
                                 if history else None, entry.manual_since,
                                 entry.prefill_capacity, entry.prefill_queued)  # fmt: skip
        self.histories[key] = [h for h in history if h.time > now - HISTORY_SECONDS] + [entry]
        self._report(body, policy, policy_name, previous, decision, applied)
        return decision

    def _deletion_costs(self, namespace: str, pool: PoolObservation) -> None:
        """Before a scale-in: each ready pod's in-flight work (running + waiting requests) as
        its pod-deletion-cost, so the ReplicaSet removes the least busy pods first (honoured
        from Kubernetes 1.22; not-ready pods go first anyway)."""
        for pod in pool.pods:
            cost = str(int(pod.running + pod.waiting_requests))
            self.client.patch("v1", "Pod", namespace, pod.name,
                              {"metadata": {"annotations": {DELETION_COST: cost}}})  # fmt: skip

    def _observe(self, namespace, name, spec, policy, deployments, now) -> Observation:
        targets = {
            role: cluster_view.targets(self.client, namespace, name, role, now)
            for role in (*POOLS, "router")
        }
        scraper = self.scrapers.setdefault((namespace, name), PodScraper())
        scraper.forget({t.uid for ts in targets.values() for t in ts})
        samples: dict[str, list] = {}
        error = None
        timeout = policy.metrics.timeout_seconds
        try:
            if policy.metrics.prometheus_url:
                reader = PrometheusReader(policy.metrics.prometheus_url, timeout)
                for role, ts in targets.items():
                    samples[role] = reader.read(namespace, ts, policy.evaluation_interval_seconds)
            else:
                for role, ts in targets.items():
                    samples[role] = scraper.read(ts, now, timeout)
        except MetricsError as exc:
            error = str(exc)
        pools = {}
        for pool in POOLS:
            desired, ready, starting = cluster_view.replicas(deployments[pool])
            pools[pool] = PoolObservation(
                desired, ready, starting, cluster_view.gpus_per_replica(spec, pool),
                tuple(samples.get(pool, ())),
            )  # fmt: skip
        routers = samples.get("router", [])
        router = RouterSample(
            ttft=merge([s.ttft for s in routers]), tbt=merge([s.tbt for s in routers])
        )
        return Observation(now, pools, router, metrics_error=error)

    def _report(self, body, policy, policy_name, previous, decision: Decision, applied) -> None:
        meta = body["metadata"]
        ns, name = meta["namespace"], meta["name"]
        for pool in decision.manual_changes:
            p = decision.pools[pool]
            what = (
                f"left alone for {policy.manual_change.hold_seconds}s (manualChange yield)"
                if pool in decision.manual_since
                else f"set back to {p.desired} (manualChange reclaim)"
            )
            self.recorder.event(body, "Warning", "ManualScaleDetected",
                                f"{pool} replicas were changed to {p.current} by someone else: "
                                f"{what}")  # fmt: skip
        recorded = list(previous.get("decisions") or [])
        if record.is_news(decision, recorded):
            self.recorder.event(body, "Normal", decision.reason, decision.message())
        if record.worth_recording(decision, recorded):
            status = record.status(decision, policy_name, policy.history_limit, previous, applied)
            patch: dict[str, Any] = {"autoscaling": status}
            patch["lastScalingDecision"] = {
                "time": status["lastDecisionTime"],
                "prefillReplicas": decision.pools["prefill"].desired,
                "decodeReplicas": decision.pools["decode"].desired,
                "reason": decision.reason,
                "message": decision.message()[:1000],
            }
            self.client.patch(API_VERSION, SERVING_KIND, ns, name, {"status": patch}, "status")
        for pool, p in decision.pools.items():
            metrics.autoscaler_desired_replicas.labels(ns, name, pool).set(p.desired)
            metrics.autoscaler_current_replicas.labels(ns, name, pool).set(p.current)
        metrics.autoscaler_decisions_total.labels(ns, name, decision.reason).inc()
        metrics.autoscaler_last_decision_timestamp_seconds.labels(ns, name).set(decision.time)
        metrics.autoscaler_gpus.labels(ns, name).set(decision.gpus_after)
        metrics.autoscaler_gpu_budget.labels(ns, name).set(decision.gpu_budget or 0)
