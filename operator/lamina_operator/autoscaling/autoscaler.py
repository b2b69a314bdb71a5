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
4. active mode: scale up by patching spec.replicas; scale in by draining one pod per pool
   first (scale_in.py, drain.py): the pool's replicas drop by one once that pod's work is
   done. A pool with a drain counts one replica fewer for `decide`; demand rising cancels
   the drain. Advisory: nothing;
5. an Event per recorded decision that changes (or would change) replicas, a Warning Event per
   manual change, status.autoscaling (record.py) and the lamina_autoscaler_* metrics.
While a drain runs, every tick (not only each evaluation) looks at how far it is.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
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
from .drain_client import DrainClient
from .observation import POOLS, Observation, PoolObservation, RouterSample, merge
from .scale_in import ScaleIn
from .scrape import MetricsError, PodScraper, PodTarget, PrometheusReader

HISTORY_SECONDS = 3600 * 2  # longest stabilisation window (1 h) with room
NO_POLICY_RECHECK_SECONDS = 60  # autoscaling off or its policy missing: look again this often


class Autoscaler:
    """Per-process state: each deployment's decision history and each pod's last scrape."""

    def __init__(
        self,
        client: KubeClient,
        recorder: EventRecorder,
        clock: Callable[[], float] = time.time,
        drain_client: DrainClient | None = None,
    ):
        self.client, self.recorder, self.clock = client, recorder, clock
        self.scale_in = ScaleIn(client, recorder, drain_client)
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
        """Evaluate if due (or `force`); None when there is nothing to evaluate yet. Between
        evaluations a tick only looks at the drains in progress (if any)."""
        key, now = (namespace, name), self.clock()
        last, interval = self.last_run.get(key), self.intervals.get(key)
        due = force or last is None or interval is None or now - last >= interval
        if not due and not self.scale_in.drains.get(key):
            return None
        body = self.client.get(API_VERSION, SERVING_KIND, namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            self.histories.pop(key, None)
            self.scrapers.pop(key, None)
            self.scale_in.forget(key)
            return None
        previous = (body.get("status") or {}).get("autoscaling") or {}
        self.scale_in.restore(key, previous, now)
        policy, policy_name = self.policy_for(namespace, body.get("spec") or {})
        deployments = {
            pool: self.client.get("apps/v1", "Deployment", namespace, f"{name}-{pool}")
            for pool in POOLS
        }
        if policy is None or policy.mode != "active":
            if self.scale_in.of(key) and all(deployments.values()):
                why = "autoscaling is off" if policy is None else "the policy is advisory"
                self.scale_in.cancel_all(body, why, deployments, now)
                self._write_drains(body)
        if policy is None:  # no autoscaling, or a policy problem the reconciler reports
            self.last_run[key], self.intervals[key] = now, NO_POLICY_RECHECK_SECONDS
            return None
        if any(d is None for d in deployments.values()):
            return None  # the reconciler has not created the pools yet
        self.intervals[key] = policy.evaluation_interval_seconds
        if last is None:  # a restarted operator: continue the deployment's rhythm
            last = cluster_view.parse_time(previous.get("lastDecisionTime"))
        self.scale_in.look(body, policy, deployments, now)
        if not force and last is not None and now - last < policy.evaluation_interval_seconds:
            self._write_drains(body)
            return None
        spec, _ = parse_spec(body.get("spec"))
        self.last_run[key] = now
        obs, targets = self._observe(namespace, name, spec, policy, deployments, now)
        if obs.metrics_error:
            metrics.autoscaler_metrics_errors_total.labels(namespace, name).inc()
        history = self.histories.get(key)
        if history is None:
            history = record.history(previous)
        decision = decide(policy, obs, history)
        applied = decision.mode == "active"
        written = {pool: p.current for pool, p in decision.pools.items()}
        if applied and obs.metrics_error is None:
            written = self._apply(body, decision, obs, targets, deployments, now)
        entry = decision.history_entry(applied and obs.metrics_error is None, written)
        if obs.metrics_error:  # nothing was decided: keep the previous expectations
            entry = replace(entry, applied=history[-1].applied if history else None)
        self.histories[key] = [h for h in history if h.time > now - HISTORY_SECONDS] + [entry]
        self._report(body, policy, policy_name, previous, decision, applied, written)
        return decision

    def _apply(self, body, decision: Decision, obs, targets, deployments, now) -> dict[str, int]:
        """Act on an active decision; returns each pool's replicas as `decide` counts them."""
        written = {}
        for pool, p in decision.pools.items():
            kept = self.scale_in.wanted(body, pool, p.desired, deployments, now)
            if kept is not None:  # a drain in progress: it goes on, or a rise cancelled it
                written[pool] = kept
            elif p.desired < p.current:
                written[pool] = self.scale_in.shrink(
                    body, pool, p.desired, obs.pools[pool], targets, deployments, now
                )
            else:
                if p.desired != p.current:
                    meta = body["metadata"]
                    self.client.patch("apps/v1", "Deployment", meta["namespace"],
                                      f"{meta['name']}-{pool}",
                                      {"spec": {"replicas": p.desired}})  # fmt: skip
                written[pool] = p.desired
        return written

    def _write_drains(self, body) -> None:
        drains = self.scale_in.status_patch(
            (body["metadata"]["namespace"], body["metadata"]["name"])
        )
        if drains is not None:
            meta = body["metadata"]
            self.client.patch(API_VERSION, SERVING_KIND, meta["namespace"], meta["name"],
                              {"status": {"autoscaling": {"drains": drains}}}, "status")  # fmt: skip

    def _observe(
        self, namespace, name, spec, policy, deployments, now
    ) -> tuple[Observation, dict[str, PodTarget]]:
        """The observation `decide` gets, and the ready engine pods by name. A pod being
        drained is neither measured nor counted: its pool counts one replica fewer."""
        drains = self.scale_in.of((namespace, name))
        drained = {d.pod for d in drains.values()}
        found = {
            role: cluster_view.targets(self.client, namespace, name, role, now)
            for role in (*POOLS, "router")
        }
        targets = {r: [t for t in ts if t.name not in drained] for r, ts in found.items()}
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
            desired, ready, _ = cluster_view.replicas(deployments[pool])
            if pool in drains:
                desired = drains[pool].effective
                # until its readiness probe fails, the drained pod still counts as ready
                ready -= sum(1 for t in found[pool] if t.name in drained)
            ready = max(0, min(ready, desired))
            pools[pool] = PoolObservation(
                desired, ready, max(0, desired - ready),
                cluster_view.gpus_per_replica(spec, pool), tuple(samples.get(pool, ())),
            )  # fmt: skip
        routers = samples.get("router", [])
        router = RouterSample(
            ttft=merge([s.ttft for s in routers]), tbt=merge([s.tbt for s in routers])
        )
        by_name = {t.name: t for pool in POOLS for t in targets[pool]}
        return Observation(now, pools, router, metrics_error=error), by_name

    def _report(
        self, body, policy, policy_name, previous, decision: Decision, applied, written
    ) -> None:
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
        drains = self.scale_in.status_patch((ns, name))
        if record.worth_recording(decision, recorded):
            status = record.status(
                decision, policy_name, policy.history_limit, previous, applied, written,
                base_window=policy.scale_down.stabilization_window_seconds,
            )  # fmt: skip
            if drains is not None:
                status["drains"] = drains
            patch: dict[str, Any] = {"autoscaling": status}
            patch["lastScalingDecision"] = {
                "time": status["lastDecisionTime"],
                "prefillReplicas": decision.pools["prefill"].desired,
                "decodeReplicas": decision.pools["decode"].desired,
                "reason": decision.reason,
                "message": decision.message()[:1000],
            }
            self.client.patch(API_VERSION, SERVING_KIND, ns, name, {"status": patch}, "status")
        elif drains is not None:
            self.client.patch(API_VERSION, SERVING_KIND, ns, name,
                              {"status": {"autoscaling": {"drains": drains}}}, "status")  # fmt: skip
        for pool, p in decision.pools.items():
            metrics.autoscaler_desired_replicas.labels(ns, name, pool).set(p.desired)
            metrics.autoscaler_current_replicas.labels(ns, name, pool).set(p.current)
        metrics.autoscaler_decisions_total.labels(ns, name, decision.reason).inc()
        metrics.autoscaler_last_decision_timestamp_seconds.labels(ns, name).set(decision.time)
        metrics.autoscaler_gpus.labels(ns, name).set(decision.gpus_after)
        metrics.autoscaler_gpu_budget.labels(ns, name).set(decision.gpu_budget or 0)
