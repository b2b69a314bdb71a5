"""Status of the custom resources, per Kubernetes API conventions: no phase, conditions instead.

ServingDeployment condition types (reasons are one CamelCase word):
- Ready: the router, the decode pool and (when it has replicas) the prefill pool each have at
  least one ready pod, the managed Redis too when there is one, and the spec is valid.
- Progressing: a child is rolling out or scaling (ready/updated below desired).
- Degraded: the spec cannot be acted on (invalid, missing Secret or policy, name conflict) or a
  pool's Deployment reports a failure; the message says what to fix.
- Disaggregated: requests really split prefill and decode: prefill and decode both have ready
  pods and KV moves between pods. False makes a silent decode-only fallback visible.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .autoscaling import PodDrain
from .common import KubeModel

ConditionStatus = Literal["True", "False", "Unknown"]
PoolName = Literal["prefill", "decode", "router", "redis"]


class Condition(KubeModel):
    """One condition, as in metav1.Condition."""

    type: str = Field(description="Ready, Progressing, Degraded or Disaggregated.")
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(pattern=r"^[A-Z][A-Za-z0-9]*$", description="One CamelCase word.")
    message: str = Field(default="", description="What happened, for people.")
    last_transition_time: str = Field(description="When status last changed (RFC 3339).")
    observed_generation: int | None = Field(
        default=None, description="The .metadata.generation this condition was computed for."
    )


class PoolStatus(KubeModel):
    """Replica counts of one pool (entries are keyed by name)."""

    name: PoolName = Field(description="prefill, decode, router or redis.")
    desired_replicas: int = Field(ge=0, description="Replicas the spec (or autoscaler) asks for.")
    ready_replicas: int = Field(default=0, ge=0, description="Pods passing readiness.")
    updated_replicas: int = Field(default=0, ge=0, description="Pods on the current template.")


class ScalingDecision(KubeModel):
    """The autoscaler's latest decision and why it was taken."""

    time: str = Field(description="When it was decided (RFC 3339).")
    prefill_replicas: int = Field(ge=0, description="Prefill replicas decided.")
    decode_replicas: int = Field(ge=0, description="Decode replicas decided.")
    reason: str = Field(pattern=r"^[A-Z][A-Za-z0-9]*$", description="One CamelCase word.")
    message: str = Field(default="", description="Inputs and clamps behind the decision.")


class PoolScaling(KubeModel):
    """One pool in one autoscaler decision."""

    name: Literal["prefill", "decode"] = Field(description="prefill or decode.")
    before: int = Field(ge=0, description="Replicas the pool's Deployment had.")
    after: int = Field(ge=0, description="Replicas decided (applied only in active mode).")
    recommended: int = Field(ge=0, description="What the signals alone asked for.")
    ready: int = Field(default=0, ge=0, description="Ready pods at the decision.")
    starting: int = Field(default=0, ge=0, description="Pods not yet ready at the decision.")


class AutoscalingDecisionRecord(KubeModel):
    """One autoscaler evaluation: before/after per pool, the reason, and its inputs."""

    time: str = Field(description="When it was decided (RFC 3339).")
    reason: str = Field(pattern=r"^[A-Z][A-Za-z0-9]*$", description="One CamelCase word.")
    applied: bool = Field(description="Whether the replicas were written (false: advisory).")
    pools: list[PoolScaling] = Field(
        default_factory=list,
        description="Per pool: before, after, recommended.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    message: str = Field(default="-", description="Every signal, target and clamp behind it.")


class AutoscalingStatus(KubeModel):
    """What the autoscaler did last, and the memory it needs across operator restarts."""

    mode: Literal["active", "advisory"] = Field(description="The policy's mode when evaluated.")
    policy: str = Field(description="policyRef name, or 'inline'.")
    last_decision_time: str = Field(description="When the last recorded decision was made.")
    conditions: list[Condition] = Field(
        default_factory=list,
        description="ScalingActive (decisions are applied) and ManualChange (someone else "
        "changed a pool's replicas).",
    )
    decisions: list[AutoscalingDecisionRecord] = Field(
        default_factory=list, description="The last historyLimit decisions, oldest first."
    )
    manual_since: dict[str, str] = Field(
        default_factory=dict, description="Pool -> when a manual change being yielded to began."
    )
    prefill_capacity_tokens_per_second: int | None = Field(
        default=None, ge=0, description="Learned prompt tokens/s of one busy prefill pod."
    )
    prefill_queued_tokens: int | None = Field(
        default=None, ge=0, description="Waiting prompt tokens at the last evaluation."
    )
    decode_capacity_tokens_per_second: int | None = Field(
        default=None, ge=0, description="Learned output tokens/s of one decode pod at the TBT "
        "target (the decode demand forecast's per-pod rate).",
    )  # fmt: skip
    scale_down_window_seconds: dict[str, int] = Field(
        default_factory=dict,
        description="Pool -> scale-down stabilization window learned past the policy's (demand "
        "came back after a scale-down); a restarted operator carries on with it.",
    )
    drains: list[PodDrain] = Field(
        default_factory=list,
        description="Pods being drained before their pool shrinks (at most one per pool).",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["pool"]},
    )


class ServingDeploymentStatus(KubeModel):
    """Observed state of a ServingDeployment."""

    observed_generation: int | None = Field(
        default=None, description="The .metadata.generation the operator last acted on."
    )
    conditions: list[Condition] = Field(default_factory=list, description="Current conditions.")
    pools: list[PoolStatus] = Field(
        default_factory=list,
        description="Per-pool desired and ready replicas.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    endpoint: str | None = Field(
        default=None,
        description="The router's in-cluster URL, e.g. http://NAME-router.NS.svc:8000.",
    )
    last_scaling_decision: ScalingDecision | None = Field(
        default=None, description="The autoscaler's latest decision."
    )
    autoscaling: AutoscalingStatus | None = Field(
        default=None, description="The autoscaler's recent decisions and conditions."
    )


class AutoscalingPolicyStatus(KubeModel):
    """Observed state of an AutoscalingPolicy: whether the operator accepts it."""

    observed_generation: int | None = Field(default=None, description="Generation checked.")
    conditions: list[Condition] = Field(
        default_factory=list, description="Ready (True when the policy is valid)."
    )
