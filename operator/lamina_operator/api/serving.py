"""ServingDeployment spec: one model served by prefill, decode and router pools (docs/design.md §5).

The CRD schema enforces types, enums and ranges; the cross-field rules below (`model_validator`)
run in the operator, which reports a violation as a Degraded condition and a Warning event
(apiextensions v1 on Kubernetes 1.20 has no CEL).
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from ..constants import DEFAULT_ENGINE_IMAGE
from .autoscaling import AutoscalingPolicySpec
from .common import (
    KubeModel,
    LocalObjectRef,
    PodPlacement,
    ResourceRequirements,
    SecretKeyRef,
)
from .kv_transfer import KvTransferSpec
from .model_access import HfTokenSecretRef, S3Access
from .network import NetworkPolicySpec

Dtype = Literal["auto", "bfloat16", "float16", "float32"]
SchedulingPolicy = Literal["chunked", "layered"]

_HF = re.compile(
    r"^hf://[A-Za-z0-9][-._A-Za-z0-9]*/[A-Za-z0-9][-._A-Za-z0-9]*(@[-._/A-Za-z0-9]+)?$"
)
_PVC = re.compile(r"^pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/[^/\s]+)*/?$")
_S3 = re.compile(r"^s3://[a-z0-9][-.a-z0-9]{1,61}[a-z0-9](/[^\s]*)?$")
_BUILTIN = re.compile(r"^builtin://lamina-demo$")


class ModelSpec(KubeModel):
    """The model to serve and where its HF-format checkpoint comes from."""

    name: str = Field(
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9][-._/A-Za-z0-9]*$",
        description="Served model name: the `model` field clients send to the OpenAI API.",
    )
    source: str = Field(
        pattern=r"^(hf|pvc|s3|builtin)://",
        description=(
            "Checkpoint location: hf://org/name[@revision], s3://bucket/prefix (both downloaded "
            "by an init container into each pod), pvc://claim[/path] (mounted read-only) or "
            "builtin://lamina-demo (the small demo model inside the engine image)."
        ),
    )
    hf_token_secret: HfTokenSecretRef | None = Field(
        default=None, description="hf:// only: a Secret key holding a token (private/gated repos)."
    )
    s3: S3Access | None = Field(
        default=None, description="s3:// only: the store's endpoint and a Secret with its keys."
    )
    dtype: Dtype = Field(default="bfloat16", description="Weight and activation dtype.")
    num_layers: int | None = Field(
        default=None,
        ge=1,
        le=1024,
        description="Decoder layer count, if known: lets the operator check SPEED's prefillLayers.",
    )

    @field_validator("source")
    @classmethod
    def _source_shape(cls, value: str) -> str:
        scheme = value.split("://", 1)[0]
        pattern, example = {
            "hf": (_HF, "hf://Qwen/Qwen3-30B-A3B or hf://org/name@revision"),
            "pvc": (_PVC, "pvc://models-claim/qwen3 (claim name, then a path inside it)"),
            "s3": (_S3, "s3://my-bucket/models/qwen3"),
            "builtin": (_BUILTIN, "builtin://lamina-demo (the only built-in model)"),
        }.get(scheme, (None, "hf://org/name, pvc://claim/path or s3://bucket/prefix"))
        if pattern is None or not pattern.match(value):
            raise ValueError(f"model source {value!r} is malformed; write e.g. {example}")
        return value

    @model_validator(mode="after")
    def _credentials_match_source(self) -> ModelSpec:
        scheme = self.source.split("://", 1)[0]
        if self.hf_token_secret is not None and scheme != "hf":
            raise ValueError(
                f"model.hfTokenSecret is set but the source is {scheme}://: a Hub token is only "
                "used for hf:// sources; remove hfTokenSecret"
            )
        if self.s3 is not None and scheme != "s3":
            raise ValueError(
                f"model.s3 is set but the source is {scheme}://: it is only used for s3:// "
                "sources; remove model.s3"
            )
        return self


class SchedulingSpec(KubeModel):
    """The engine's batch scheduler (docs/design.md §3.3)."""

    policy: SchedulingPolicy = Field(
        default="chunked",
        description="chunked (Sarathi-style token budget) or layered (layer-group prefill).",
    )
    token_budget: int = Field(
        default=512, ge=16, le=65_536, description="chunked: tokens per step (tau)."
    )
    cohort_token_budget: int = Field(
        default=8192, ge=16, le=1_048_576, description="layered: prompt tokens per cohort (B)."
    )
    max_layer_groups: int = Field(
        default=16, ge=1, le=1024, description="layered: most layer groups a cohort is split in."
    )
    max_num_seqs: int = Field(default=256, ge=1, le=65_536, description="Most running requests.")
    block_size: int = Field(default=16, ge=1, le=1024, description="KV cache block, in tokens.")


class SpeedSpec(KubeModel):
    """SPEED: prompt tokens run only the lower layers (docs/design.md §3.4). Off by default."""

    enabled: bool = Field(default=False, description="Turn shallow prefill on.")
    prefill_layers: int | None = Field(
        default=None, ge=1, le=1024, description="Cutoff K as a layer count."
    )
    prefill_layers_percent: int | None = Field(
        default=None, ge=1, le=100, description="Cutoff K as a percentage of the layers."
    )
    anchor_tokens: int = Field(
        default=1, ge=0, le=64, description="Leading prompt tokens that run all layers."
    )

    @model_validator(mode="after")
    def _one_cutoff(self) -> SpeedSpec:
        if self.prefill_layers is not None and self.prefill_layers_percent is not None:
            raise ValueError(
                "set either speed.prefillLayers (a count) or speed.prefillLayersPercent, not both"
            )
        if self.enabled and self.prefill_layers is None and self.prefill_layers_percent is None:
            raise ValueError(
                "speed.enabled is true but no cutoff is set: give speed.prefillLayers (a layer "
                "count) or speed.prefillLayersPercent (e.g. 75)"
            )
        return self


class EngineSpec(KubeModel):
    """The engine image and its settings, shared by every pool (P and D must agree)."""

    image: str = Field(
        default=DEFAULT_ENGINE_IMAGE, min_length=1, description="Engine container image."
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field(
        default="IfNotPresent", description="Image pull policy."
    )
    scheduling: SchedulingSpec = Field(default_factory=SchedulingSpec, description="Scheduler.")
    speed: SpeedSpec = Field(default_factory=SpeedSpec, description="SPEED shallow prefill.")
    kv_transfer: KvTransferSpec = Field(
        default_factory=KvTransferSpec, description="KV transfer backend."
    )


class PoolSpec(PodPlacement):
    """A prefill or decode pool."""

    replicas: int = Field(default=1, ge=0, le=1000, description="Pods in this pool.")
    resources: ResourceRequirements = Field(
        default_factory=ResourceRequirements,
        description=(
            "Container resources. The engine uses one device per pod: give nvidia.com/gpu: 1 "
            "(limits) and a model that fits it. cpu or memory named neither in requests nor "
            "in limits default to requests {cpu: 500m, memory: 2Gi} and limits {memory: 64Gi} "
            "(no CPU limit: throttling stalls decode steps); size them for a large model."
        ),
    )


class RoutingSpec(KubeModel):
    """How the router spreads requests (docs/design.md §4)."""

    prefill_picker: Literal["prefix-load", "least-load", "round-robin"] = Field(
        default="prefix-load",
        description="prefix-load: longest prefix-cache match, then least outstanding FLOPs.",
    )
    decode_picker: Literal["least-kv", "round-robin"] = Field(
        default="least-kv", description="least-kv: lowest KV-cache utilisation."
    )
    disaggregation_min_prompt_tokens: int = Field(
        default=0,
        ge=0,
        le=1_048_576,
        description="Prompts shorter than this are prefilled by the decode pod (0: always split).",
    )
    load_decay_seconds: int = Field(
        default=10, ge=1, le=3600, description="Half-life of the per-pod load estimate."
    )


class ApiKeySecretRef(SecretKeyRef):
    """The Secret key holding the API key clients must send (`Authorization: Bearer KEY`)."""

    key: str = Field(
        pattern=r"^[-._a-zA-Z0-9]+$",
        description="Key in the Secret's data holding the API key (no default: name it).",
    )


class RouterSpec(PodPlacement):
    """The OpenAI-compatible router in front of the pools."""

    replicas: int = Field(default=1, ge=1, le=1000, description="Router pods.")
    resources: ResourceRequirements = Field(
        default_factory=ResourceRequirements,
        description=(
            "Container resources. cpu or memory named neither in requests nor in limits "
            "default to requests {cpu: 250m, memory: 512Mi} and limits {memory: 8Gi}."
        ),
    )
    routing: RoutingSpec = Field(default_factory=RoutingSpec, description="Routing knobs.")
    service_type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = Field(
        default="ClusterIP", description="Type of the router Service (the endpoint)."
    )
    api_key_secret: ApiKeySecretRef | None = Field(
        default=None,
        description=(
            "A Secret in this namespace holding the API key: every /v1/* request to the router "
            "(and to an engine pod's public port) must then send `Authorization: Bearer KEY`, "
            "else 401; /health and /metrics stay open. Pods read it by secretKeyRef (the "
            "operator never reads it); a missing Secret or key keeps the pods from starting "
            "(CreateContainerConfigError). Absent: no authentication on the public API."
        ),
    )


class AutoscalingSpec(KubeModel):
    """Autoscaling of the prefill and decode pools: an inline policy or a reference to one."""

    enabled: bool = Field(default=True, description="false keeps the pools at their replicas.")
    policy_ref: LocalObjectRef | None = Field(
        default=None, description="An AutoscalingPolicy in this namespace."
    )
    policy: AutoscalingPolicySpec | None = Field(default=None, description="An inline policy.")

    @model_validator(mode="after")
    def _exactly_one(self) -> AutoscalingSpec:
        if (self.policy_ref is None) == (self.policy is None):
            raise ValueError(
                "autoscaling needs exactly one of policyRef (an AutoscalingPolicy name) or "
                "policy (inline); remove autoscaling to keep replicas fixed"
            )
        return self


class ServingDeploymentSpec(KubeModel):
    """Desired state: what to serve, with which engine settings, on which pools."""

    model: ModelSpec = Field(description="The model and its checkpoint source.")
    engine: EngineSpec = Field(default_factory=EngineSpec, description="Engine image/settings.")
    prefill: PoolSpec = Field(default_factory=PoolSpec, description="The prefill pool.")
    decode: PoolSpec = Field(default_factory=PoolSpec, description="The decode pool.")
    router: RouterSpec = Field(default_factory=RouterSpec, description="The router.")
    autoscaling: AutoscalingSpec | None = Field(
        default=None, description="Autoscaling; absent means replicas stay as written."
    )
    network_policy: NetworkPolicySpec = Field(
        default_factory=NetworkPolicySpec, description="Who may reach the pods (Ingress)."
    )

    @model_validator(mode="after")
    def _pools_consistent(self) -> ServingDeploymentSpec:
        if self.decode.replicas == 0 and self.prefill.replicas > 0:
            raise ValueError(
                f"decode.replicas is 0 but prefill.replicas is {self.prefill.replicas}: prefill "
                "pods hand every request to a decode pod; set decode.replicas >= 1"
            )
        if self.engine.kv_transfer.backend == "nixl":
            raise ValueError(
                "kvTransfer.backend nixl is not supported yet: a decode pod must be told which "
                "prefill pod holds each request's KV, and nothing does that, so decode pods "
                "would fail at start; use backend: redis"
            )
        if self.engine.kv_transfer.backend == "local" and self.prefill.replicas > 0:
            raise ValueError(
                "kvTransfer.backend local only works inside one process, but prefill and decode "
                "run in separate pods: use redis, or set prefill.replicas: 0"
            )
        speed, layers = self.engine.speed, self.model.num_layers
        if speed.prefill_layers is not None and layers is not None:
            if speed.prefill_layers > layers:
                raise ValueError(
                    f"speed.prefillLayers ({speed.prefill_layers}) exceeds model.numLayers "
                    f"({layers}); pick a cutoff below the layer count"
                )
        return self
