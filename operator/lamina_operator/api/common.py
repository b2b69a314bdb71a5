"""Building blocks shared by the CRD models: the camelCase base model and Kubernetes-like types.

Every model serialises with camelCase names (`passwordSecretRef`) because that is what users
write in YAML; Python code reads snake_case attributes.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt
from pydantic.alias_generators import to_camel

# Kubernetes resource.Quantity as the apiserver parses it ("500m", "4Gi", "1", 2), non-negative.
_QUANTITY = re.compile(
    r"^[+]?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE][+-]?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# Key of a resource map entry: "cpu", "memory", "nvidia.com/gpu", "ephemeral-storage".
_RESOURCE_NAME = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[a-zA-Z0-9]([-_.a-zA-Z0-9]*)$")


class KubeModel(BaseModel):
    """Base of every CRD model: camelCase JSON names, unknown fields rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_default=True,
    )


def _check_quantity(value: int | str) -> int | str:
    if isinstance(value, bool):
        raise ValueError("a quantity is a number or a string such as '500m' or '4Gi', not a bool")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"quantity {value} is negative; resources cannot be negative")
        return value
    if not _QUANTITY.match(value):
        raise ValueError(
            f"{value!r} is not a Kubernetes quantity; write e.g. 2, '500m', '16Gi' or '1.5'"
        )
    return value


# StrictInt: a YAML `true` must not pass as the quantity 1.
Quantity = Annotated[Union[StrictInt, str], AfterValidator(_check_quantity)]


def _check_resource_map(value: dict[str, int | str]) -> dict[str, int | str]:
    for key in value:
        if not _RESOURCE_NAME.match(key):
            raise ValueError(
                f"{key!r} is not a resource name; use names such as cpu, memory, nvidia.com/gpu"
            )
    return value


ResourceMap = Annotated[dict[str, Quantity], AfterValidator(_check_resource_map)]


class ResourceRequirements(KubeModel):
    """Compute resources of one container, as in a Pod spec (`nvidia.com/gpu` included)."""

    requests: ResourceMap = Field(
        default_factory=dict, description="Minimum resources, e.g. {cpu: 4, memory: 32Gi}."
    )
    limits: ResourceMap = Field(
        default_factory=dict,
        description="Maximum resources, e.g. {nvidia.com/gpu: 1}. GPUs are set as limits.",
    )


class Toleration(KubeModel):
    """A Pod toleration (same fields as core/v1 Toleration)."""

    key: str | None = Field(default=None, description="Taint key; empty matches all keys.")
    operator: Literal["Exists", "Equal"] | None = Field(
        default=None, description="Exists or Equal (the Kubernetes default is Equal)."
    )
    value: str | None = Field(default=None, description="Taint value for operator Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to match; empty matches all effects."
    )
    toleration_seconds: int | None = Field(
        default=None, ge=0, description="For NoExecute: seconds the pod stays bound after taint."
    )


class EnvVar(KubeModel):
    """An extra environment variable for the engine container."""

    name: str = Field(pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$", description="Variable name.")
    value: str | None = Field(default=None, description="Literal value.")
    value_from: dict[str, Any] | None = Field(
        default=None,
        description="A core/v1 EnvVarSource (secretKeyRef, configMapKeyRef, fieldRef, ...).",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )


class SecretKeyRef(KubeModel):
    """A key inside a Secret in the ServingDeployment's namespace."""

    name: str = Field(pattern=DNS_SUBDOMAIN, max_length=253, description="Name of the Secret.")
    key: str = Field(
        default="password",
        pattern=r"^[-._a-zA-Z0-9]+$",
        description="Key in the Secret's data holding the value.",
    )


class LocalObjectRef(KubeModel):
    """A reference by name to an object in the same namespace."""

    name: str = Field(min_length=1, max_length=253, description="Name of the object.")


class PodPlacement(KubeModel):
    """Where and with what a pool's pods run. Shared by prefill, decode and router."""

    resources: ResourceRequirements = Field(
        default_factory=ResourceRequirements, description="Container resources."
    )
    node_selector: dict[str, str] = Field(
        default_factory=dict, description="Node labels the pods must match."
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, description="Taints the pods tolerate (e.g. GPU node taints)."
    )
    affinity: dict[str, Any] | None = Field(
        default=None,
        description="A core/v1 Affinity (nodeAffinity, podAffinity, podAntiAffinity).",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    extra_args: list[str] = Field(
        default_factory=list, description="Extra `lamina serve` arguments, appended last."
    )
    env: list[EnvVar] = Field(
        default_factory=list, description="Extra environment variables for the engine container."
    )
