"""How prefill pods ship KV cache to decode pods: the backend, and the Redis it goes through
(an external one by url and Secret, or one the operator runs), with its memory and TLS."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, model_validator

from .common import KubeModel, SecretKeyRef

KvBackend = Literal["redis", "nixl", "local"]
# Memory of the managed Redis: a binary or decimal size the builder turns into bytes.
_REDIS_MEMORY = r"^[1-9][0-9]*(Ki|Mi|Gi|Ti|k|M|G|T)?$"
MiB = 1 << 20


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
