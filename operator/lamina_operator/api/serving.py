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
from .common import KubeModel, LocalObjectRef, PodPlacement, ResourceRequirements, SecretKeyRef
from .network import NetworkPolicySpec

Dtype = Literal["auto", "bfloat16", "float16", "float32"]
SchedulingPolicy = Literal["chunked", "layered"]
KvBackend = Literal["redis", "nixl", "local"]

_HF = re.compile(
    r"^hf://[A-Za-z0-9][-._A-Za-z0-9]*/[A-Za-z0-9][-._A-Za-z0-9]*(@[-._/A-Za-z0-9]+)?$"
)
_PVC = re.compile(r"^pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/[^/\s]+)*/?$")
_S3 = re.compile(r"^s3://[a-z0-9][-.a-z0-9]{1,61}[a-z0-9](/[^\s]*)?$")
# Memory of the managed Redis: a binary or decimal size the builder turns into bytes.
_REDIS_MEMORY = r"^[1-9][0-9]*(Ki|Mi|Gi|Ti|k|M|G|T)?$"
MiB = 1 << 20


class ModelSpec(KubeModel):
    """The model to serve and where its HF-format checkpoint comes from."""

    name: str = Field(
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9][-._/A-Za-z0-9]*$",
        description="Served model name: the `model` field clients send to the OpenAI API.",
    )
    source: str = Field(
        pattern=r"^(hf|pvc|s3)://",
        description=(
            "Checkpoint location: hf://org/name[@revision], pvc://claim[/path] "
            "(mounted read-only) or s3://bucket/prefix."
        ),
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
        }.get(scheme, (None, "hf://org/name, pvc://claim/path or s3://bucket/prefix"))
        if pattern is None or not pattern.match(value):
            raise ValueError(f"model source {value!r} is malformed; write e.g. {example}")
        return value


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


class RedisTlsSpec(KubeModel):
    """TLS to Redis, verified against a CA kept in a Secret."""

    secret_name: str = Field(
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
        max_length=253,
        description=(
            "Secret in this namespace. Its CA (caKey) verifies Redis's certificate; prefill and "
            "decode pods mount only that key. Managed Redis: the Secret also holds the server's "
            "tls.crt and tls.key (a cert-manager Certificate's Secret has all three), and the "
            "certificate must name <name>-redis.<namespace>.svc."
        ),
    )
    ca_key: str = Field(
        default="ca.crt",
        pattern=r"^[-._a-zA-Z0-9]+$",
        description="Key of the PEM CA bundle in the Secret.",
    )


class RedisSpec(KubeModel):
    """Redis used for KV transfer: an existing one (url + secret) or one the operator runs."""

    managed: bool | None = Field(
        default=None,
        description=(
            "Run a Redis for this ServingDeployment with a generated password. "
            "Unset: managed when no url is given."
        ),
    )
    url: str | None = Field(
        default=None,
        pattern=r"^rediss?://[^\s@]+$",
        description="redis:// or rediss:// URL without credentials, e.g. redis://redis:6379/0.",
    )
    password_secret_ref: SecretKeyRef | None = Field(
        default=None, description="Secret key holding the Redis password (never inline)."
    )
    image: str | None = Field(default=None, description="managed: Redis image override.")
    memory: str = Field(
        default="4Gi",
        pattern=_REDIS_MEMORY,
        description=(
            "managed: memory request and limit of the Redis container (e.g. 4Gi). Redis gets "
            "maxmemory = 3/4 of it (the rest covers fragmentation and client buffers of "
            "multi-MiB KV reads) and evicts with volatile-ttl. Size it to the KV bytes of the "
            "prompts shipped within ttlSeconds."
        ),
    )
    tls: RedisTlsSpec | None = Field(
        default=None,
        description=(
            "TLS with a CA from a Secret. External Redis: the url must be rediss://. Managed "
            "Redis: serves TLS only, with the Secret's certificate."
        ),
    )

    @property
    def runs_managed(self) -> bool:
        """Whether the operator runs the Redis (explicitly, or because no url was given)."""
        return self.managed if self.managed is not None else self.url is None

    @model_validator(mode="after")
    def _one_source(self) -> RedisSpec:
        if self.managed is False and self.url is None:
            raise ValueError(
                "redis.managed is false but redis.url is missing: give the url of your Redis "
                "(and passwordSecretRef), or drop managed to let the operator run one"
            )
        if self.managed and (self.url is not None or self.password_secret_ref is not None):
            raise ValueError(
                "redis.managed is true, so the operator sets url and password itself: "
                "remove redis.url and redis.passwordSecretRef, or set managed: false"
            )
        if self.tls is not None and self.url is not None and not self.url.startswith("rediss://"):
            raise ValueError(
                f"redis.tls is set but redis.url {self.url!r} is plain redis://: write "
                "rediss://host:port/db so the engines speak TLS, or remove redis.tls"
            )
        if self.url is not None and "ssl_ca_certs" in self.url:
            raise ValueError(
                "redis.url names ssl_ca_certs; put the CA in a Secret and set redis.tls.secretName "
                "instead (the operator mounts it and points the engines at it)"
            )
        if self.runs_managed and size_bytes(self.memory) < 64 * MiB:
            raise ValueError(
                f"redis.memory {self.memory!r} is below 64Mi; Redis and one KV group do not fit"
            )
        return self


def size_bytes(quantity: str) -> int:
    """'4Gi' -> 4 * 2**30, '500M' -> 500 * 10**6 (the shapes `_REDIS_MEMORY` admits)."""
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40,
             "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}  # fmt: skip
    match = re.fullmatch(r"([0-9]+)([A-Za-z]*)", quantity)
    if match is None:
        raise ValueError(f"{quantity!r} is not a size such as 4Gi or 500M")
    return int(match[1]) * units.get(match[2], 1)


class KvTransferSpec(KubeModel):
    """How prefill pods ship KV cache to decode pods (docs/design.md §3.7)."""

    backend: KvBackend = Field(
        default="redis",
        description=(
            "redis (default) or local (one process only, prefill.replicas 0). nixl (RDMA) is "
            "refused for now: nothing tells a decode pod which prefill pod holds a request's "
            "KV yet, so its pods would fail."
        ),
    )
    redis: RedisSpec = Field(default_factory=RedisSpec, description="Redis settings.")
    ttl_seconds: int = Field(
        default=300, ge=1, le=86_400, description="Lifetime of a shipped KV blob, in seconds."
    )

    @property
    def managed_redis(self) -> bool:
        """Whether the operator runs a Redis for this deployment."""
        return self.backend == "redis" and self.redis.runs_managed


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
            "in limits default to requests {cpu: 4, memory: 16Gi} and limits {memory: 64Gi} "
            "(no CPU limit: throttling stalls decode steps)."
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


class RouterSpec(PodPlacement):
    """The OpenAI-compatible router in front of the pools."""

    replicas: int = Field(default=1, ge=1, le=1000, description="Router pods.")
    resources: ResourceRequirements = Field(
        default_factory=ResourceRequirements,
        description=(
            "Container resources. cpu or memory named neither in requests nor in limits "
            "default to requests {cpu: 1, memory: 2Gi} and limits {memory: 8Gi}."
        ),
    )
    routing: RoutingSpec = Field(default_factory=RoutingSpec, description="Routing knobs.")
    service_type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = Field(
        default="ClusterIP", description="Type of the router Service (the endpoint)."
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
