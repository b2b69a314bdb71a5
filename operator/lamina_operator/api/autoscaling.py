"""AutoscalingPolicy: a reusable SLO policy for a ServingDeployment's prefill and decode pools.

No floats in spec (Kubernetes API conventions): latencies are integer milliseconds, percentiles
integers in [50, 99] (p99.9 is out of scope), the P:D ratio is a pair of integer percentages,
utilisations and tolerances integer percent. `lamina_operator.autoscaling.decide` acts on every
field; docs/autoscaling.md says how.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from .common import KubeModel

# Engine pods' liveness probe restarts a container after 6 failed /health checks 10 s apart;
# A draining engine stays live (/livez; builders/pods.py), so a drain may be long; ten minutes
# bounds how long a scale-in decision can take to act.
DRAIN_TIMEOUT_LIMIT_SECONDS = 600


class LatencyTarget(KubeModel):
    """A latency objective: the given percentile must stay at or under the target."""

    percentile: int = Field(default=90, ge=50, le=99, description="Percentile, e.g. 90 for p90.")
    target_milliseconds: int = Field(
        ge=1, le=600_000, description="Target latency at that percentile, in milliseconds."
    )


class ReplicaBounds(KubeModel):
    """Inclusive replica bounds for one pool."""

    min_replicas: int = Field(default=1, ge=0, le=1000, description="Fewest replicas.")
    max_replicas: int = Field(default=8, ge=0, le=1000, description="Most replicas.")


class RatioBounds(KubeModel):
    """Bounds on prefill replicas per decode replica, in percent (50 means 1 P : 2 D)."""

    min_percent: int = Field(default=10, ge=0, le=10_000, description="Lowest P:D, percent.")
    max_percent: int = Field(default=400, ge=0, le=10_000, description="Highest P:D, percent.")


class ScalingBehavior(KubeModel):
    """How fast one direction of scaling may move."""

    stabilization_window_seconds: int = Field(
        ge=0,
        le=3600,
        description="The highest recommendation over this window is used (as the HPA does).",
    )
    max_step: int = Field(
        default=4, ge=1, le=100, description="Most replicas added or removed per decision."
    )


def _default_up() -> ScalingBehavior:
    return ScalingBehavior(stabilization_window_seconds=0)


def _default_down() -> ScalingBehavior:
    return ScalingBehavior(stabilization_window_seconds=300, max_step=1)


class ManualChangePolicy(KubeModel):
    """What the autoscaler does when someone else changes a pool's replicas while it is active."""

    action: Literal["yield", "reclaim"] = Field(
        default="yield",
        description=(
            "yield: keep the new replicas for holdSeconds, then autoscale from them; "
            "reclaim: report the change once, then apply the autoscaler's own decision."
        ),
    )
    hold_seconds: int = Field(
        default=900,
        ge=0,
        le=86_400,
        description="yield: seconds the manually set replicas are left alone.",
    )


class MetricsSource(KubeModel):
    """Where the autoscaler reads pool metrics: the pods themselves, or a Prometheus."""

    prometheus_url: str | None = Field(
        default=None,
        pattern=r"^https?://[^\s]+$",
        description=(
            "Prometheus HTTP API base URL, e.g. http://prometheus.monitoring.svc:9090; unset: "
            "scrape the router and engine pods' /metrics directly."
        ),
    )
    timeout_seconds: int = Field(
        default=5, ge=1, le=60, description="Timeout of one metrics request, in seconds."
    )


class DrainPolicy(KubeModel):
    """Scale-in: the pod chosen to go is drained (no new work) before its pool shrinks."""

    timeout_seconds: int = Field(
        default=120,  # the engine pods' terminationGracePeriodSeconds: the same patience
        ge=5,
        le=DRAIN_TIMEOUT_LIMIT_SECONDS,
        description=(
            "Most seconds to wait for the drained pod's requests and KV transfers to finish; "
            "then it is removed anyway (Warning Event DrainTimedOut). At most 600. A draining "
            "engine is out of the Service (readiness /health is 503) but stays live (/livez), "
            "so long generations can finish."
        ),
    )


class PodDrain(KubeModel):
    """A pod being drained before its pool shrinks (status.autoscaling.drains)."""

    pool: Literal["prefill", "decode"] = Field(description="The pool that shrinks.")
    pod: str = Field(description="The pod being drained, then removed.")
    uid: str = Field(default="", description="Its uid (a new pod of the same name is another).")
    started: str = Field(description="When the drain began (RFC 3339).")
    replicas: int = Field(
        ge=1, description="The pool's replicas while draining; one fewer once drained."
    )
    stage: Literal["Draining", "Removing"] = Field(
        description="Draining: waiting for its work to finish; Removing: replicas lowered, "
        "waiting for the ReplicaSet to delete this pod."
    )
    in_flight: int = Field(default=0, ge=0, description="Requests not finished at last look.")
    kv_pending: int = Field(default=0, ge=0, description="KV transfers not finished at last look.")


class AutoscalingPolicySpec(KubeModel):
    """SLO targets and bounds for one closed scaling loop over both pools."""

    ttft: LatencyTarget | None = Field(
        default=None, description="Time-to-first-token objective (drives the prefill pool)."
    )
    tbt: LatencyTarget | None = Field(
        default=None, description="Time-between-tokens objective (drives the decode pool)."
    )
    prefill: ReplicaBounds = Field(
        default_factory=ReplicaBounds, description="Replica bounds of the prefill pool."
    )
    decode: ReplicaBounds = Field(
        default_factory=ReplicaBounds, description="Replica bounds of the decode pool."
    )
    prefill_to_decode_ratio: RatioBounds = Field(
        default_factory=RatioBounds, description="Bounds on prefill replicas per decode replica."
    )
    gpu_budget: int | None = Field(
        default=None,
        ge=1,
        le=100_000,
        description="Most GPUs (nvidia.com/gpu limits) prefill and decode may use together.",
    )
    keep_gpu_total: bool = Field(
        default=False,
        description=(
            "true: keep prefill+decode GPUs equal to gpuBudget and only move replicas between "
            "the pools (within min/max and the ratio bounds)."
        ),
    )
    mode: Literal["active", "advisory"] = Field(
        default="active",
        description="active: apply decisions; advisory: decide and report, change nothing.",
    )
    tolerance_percent: int = Field(
        default=10,
        ge=0,
        le=100,
        description="No change while every signal is within this many percent of its target.",
    )
    warmup_seconds: int = Field(
        default=60,
        ge=0,
        le=3600,
        description="Latency samples of pods ready for less than this are ignored (cold start).",
    )
    target_kv_utilization_percent: int = Field(
        default=80, ge=1, le=100, description="Decode KV-cache utilisation to hold pods at."
    )
    target_prefill_backlog_milliseconds: int | None = Field(
        default=None,
        ge=1,
        le=600_000,
        description=(
            "Queued prefill work per pool, in milliseconds of its measured prefill rate, to hold "
            "at. Unset: half the TTFT target, or 1000 ms without one."
        ),
    )
    manual_change: ManualChangePolicy = Field(
        default_factory=ManualChangePolicy,
        description="What to do when a pool's replicas are changed by someone else.",
    )
    metrics: MetricsSource = Field(
        default_factory=MetricsSource, description="Where pool metrics are read."
    )
    history_limit: int = Field(
        default=10, ge=1, le=100, description="Decisions kept in the ServingDeployment status."
    )
    evaluation_interval_seconds: int = Field(
        default=15, ge=5, le=3600, description="Seconds between scaling evaluations."
    )
    scale_up: ScalingBehavior = Field(
        default_factory=_default_up, description="Scale-up behaviour (fast by default)."
    )
    scale_down: ScalingBehavior = Field(
        default_factory=_default_down, description="Scale-down behaviour (slow by default)."
    )
    drain: DrainPolicy = Field(
        default_factory=DrainPolicy,
        description="How a pod is drained before a scale-in removes it.",
    )

    @model_validator(mode="after")
    def _coherent(self) -> AutoscalingPolicySpec:
        for pool in ("prefill", "decode"):
            bounds: ReplicaBounds = getattr(self, pool)
            if bounds.min_replicas > bounds.max_replicas:
                raise ValueError(
                    f"{pool}.minReplicas ({bounds.min_replicas}) is greater than "
                    f"{pool}.maxReplicas ({bounds.max_replicas}); lower min or raise max"
                )
        if self.decode.max_replicas == 0 and self.prefill.max_replicas > 0:
            raise ValueError(
                "decode.maxReplicas is 0 but prefill may scale up: prefill pods need decode "
                "pods to hand requests to; allow at least one decode replica"
            )
        ratio = self.prefill_to_decode_ratio
        if ratio.min_percent > ratio.max_percent:
            raise ValueError(
                f"prefillToDecodeRatio.minPercent ({ratio.min_percent}) is greater than "
                f"maxPercent ({ratio.max_percent}); swap them"
            )
        if self.keep_gpu_total and self.gpu_budget is None:
            raise ValueError(
                "keepGpuTotal is true but gpuBudget is not set: set gpuBudget to the GPU total "
                "to keep, or drop keepGpuTotal"
            )
        return self

    @property
    def backlog_target_seconds(self) -> float:
        """Prefill backlog to hold each pool at, in seconds of its measured prefill rate."""
        if self.target_prefill_backlog_milliseconds is not None:
            return self.target_prefill_backlog_milliseconds / 1000
        if self.ttft is not None:
            return self.ttft.target_milliseconds / 2000
        return 1.0
