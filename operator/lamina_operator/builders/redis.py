"""The optional managed Redis for KV transfer: Deployment, Service, password Secret.

The password is generated once, when the Secret is created (the reconciler never rewrites it),
and reaches Redis and the engines only by secretKeyRef. Redis keeps KV blobs with a TTL in
memory; nothing is persisted (`--save ""`, no AOF), so its data dir is an emptyDir.

Memory: the container's request = limit = `redis.memory`, and `maxmemory` is 3/4 of it (Redis
counts its dataset only; fragmentation and the output buffers of multi-MiB GETs live in the
rest). Eviction is volatile-ttl: every key Lamina writes carries a TTL (blobs `ttlSeconds`, a
request's readiness stream twice that), so the key nearest expiry is the oldest blob, the one a
decode pod most likely read already. Readiness streams outlive their blobs and are evicted
last, so a reader sees a blob gone (KVMissing: recompute now) rather than waiting for one that
never comes; allkeys-lru could drop a stream a reader is about to XREAD. Should memory hold no
volatile key, writes fail with OOM and the decode pod recomputes: no wrong KV is ever served.
TLS (`redis.tls`): Redis serves TLS only, with the Secret's tls.crt/tls.key; clients are not
asked for certificates (the password authenticates them).
"""

from __future__ import annotations

import secrets
from typing import Any

from ..api import ServingDeploymentSpec
from ..api.kv_transfer import size_bytes
from ..constants import DEFAULT_REDIS_IMAGE, REDIS_PORT, REDIS_UID
from . import pods
from .names import Owner, child_name, labels, metadata, redis_secret_name, selector_labels


def generate_password() -> str:
    """32 random bytes, URL-safe (no characters Redis or a URL would need escaped)."""
    return secrets.token_urlsafe(32)


def build_redis_secret(owner: Owner, password: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata(owner, redis_secret_name(owner), "redis", "redis"),
        "type": "Opaque",
        "stringData": {"password": password},
    }


TLS_DIR = "/etc/redis/tls"


def redis_args(spec: ServingDeploymentSpec) -> list[str]:
    """redis-server flags: port (TLS-only when redis.tls is set), memory, no persistence."""
    redis = spec.engine.kv_transfer.redis
    args = ["--port", str(REDIS_PORT)]
    if redis.tls is not None:
        args = [
            "--port", "0", "--tls-port", str(REDIS_PORT),
            "--tls-cert-file", f"{TLS_DIR}/tls.crt", "--tls-key-file", f"{TLS_DIR}/tls.key",
            "--tls-ca-cert-file", f"{TLS_DIR}/{redis.tls.ca_key}", "--tls-auth-clients", "no",
        ]  # fmt: skip
    args += [
        "--maxmemory", str(size_bytes(redis.memory) * 3 // 4),
        "--maxmemory-policy", "volatile-ttl",
        "--save", "",
        "--appendonly", "no",
        # $(REDIS_PASSWORD) is expanded by the kubelet: the pod spec never holds the password.
        "--requirepass", "$(REDIS_PASSWORD)",
    ]  # fmt: skip
    return args


def build_redis_deployment(owner: Owner, spec: ServingDeploymentSpec) -> dict[str, Any]:
    redis = spec.engine.kv_transfer.redis
    image = redis.image or DEFAULT_REDIS_IMAGE
    mounts = [{"name": "data", "mountPath": "/data"}]
    volumes: list[dict[str, Any]] = [{"name": "data", "emptyDir": {}}]
    if redis.tls is not None:
        mounts.append({"name": "tls", "mountPath": TLS_DIR, "readOnly": True})
        volumes.append({"name": "tls", "secret": {"secretName": redis.tls.secret_name}})
    container = {
        "name": "redis",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "args": redis_args(spec),
        "env": [
            {
                "name": "REDIS_PASSWORD",
                "valueFrom": {
                    "secretKeyRef": {"name": redis_secret_name(owner), "key": "password"}
                },
            }
        ],
        "ports": [{"name": "redis", "containerPort": REDIS_PORT, "protocol": "TCP"}],
        "readinessProbe": {"tcpSocket": {"port": "redis"}, "periodSeconds": 5},
        "livenessProbe": {"tcpSocket": {"port": "redis"}, "periodSeconds": 10},
        # request = limit for memory: Redis is never the pod evicted or OOM-killed first.
        "resources": {
            "requests": {"cpu": "250m", "memory": redis.memory},
            "limits": {"cpu": "2", "memory": redis.memory},
        },
        "securityContext": pods.container_security_context(),
        "volumeMounts": mounts,
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(owner, child_name(owner, "redis"), "redis", "redis"),
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": selector_labels(owner, "redis")},
            "strategy": {"type": "Recreate"},
            "revisionHistoryLimit": 5,
            "template": {
                "metadata": {"labels": labels(owner, "redis", "redis")},
                "spec": {
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": pods.pod_security_context(REDIS_UID),
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        },
    }


def build_redis_service(owner: Owner) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(owner, child_name(owner, "redis"), "redis", "redis"),
        "spec": {
            "selector": selector_labels(owner, "redis"),
            "ports": [
                {"name": "redis", "port": REDIS_PORT, "targetPort": "redis", "protocol": "TCP"}
            ],
        },
    }
