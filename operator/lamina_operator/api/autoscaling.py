"""AutoscalingPolicy: a reusable SLO policy for a ServingDeployment's prefill and decode pools.

No floats in spec (Kubernetes API conventions): latencies are integer milliseconds, percentiles
integers in [50, 99] (p99.9 is out of scope), the P:D ratio is a pair of integer percentages.
The controller that acts on it comes with the autoscaling issue; here are the schema and the
checks that keep a policy coherent.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from .common import KubeModel


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
    evaluation_interval_seconds: int = Field(
        default=15, ge=5, le=3600, description="Seconds between scaling evaluations."
    )
    scale_up: ScalingBehavior = Field(
        default_factory=_default_up, description="Scale-up behaviour (fast by default)."
    )
    scale_down: ScalingBehavior = Field(
        default_factory=_default_down, description="Scale-down behaviour (slow by default)."
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
        return self
