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


class AutoscalingPolicyStatus(KubeModel):
    """Observed state of an AutoscalingPolicy: whether the operator accepts it."""

    observed_generation: int | None = Field(default=None, description="Generation checked.")
    conditions: list[Condition] = Field(
        default_factory=list, description="Ready (True when the policy is valid)."
    )
