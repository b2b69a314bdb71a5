"""The optional managed Redis for KV transfer: Deployment, Service, password Secret.

The password is generated once, when the Secret is created (the reconciler never rewrites it),
and reaches Redis and the engines only by secretKeyRef. Redis keeps KV blobs with a TTL in
memory; nothing is persisted (`--save ""`, no AOF), so its data dir is an emptyDir.
"""

from __future__ import annotations

import secrets
from typing import Any

from ..api import ServingDeploymentSpec
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


def build_redis_deployment(owner: Owner, spec: ServingDeploymentSpec) -> dict[str, Any]:
    image = spec.engine.kv_transfer.redis.image or DEFAULT_REDIS_IMAGE
    container = {
        "name": "redis",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        # $(REDIS_PASSWORD) is expanded by the kubelet: the pod spec never holds the password.
        "args": [
            "--port",
            str(REDIS_PORT),
            "--save",
            "",
            "--appendonly",
            "no",
            "--requirepass",
            "$(REDIS_PASSWORD)",
        ],  # fmt: skip
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
        "resources": {"requests": {"cpu": "250m", "memory": "512Mi"}},
        "securityContext": pods.container_security_context(),
        "volumeMounts": [{"name": "data", "mountPath": "/data"}],
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
                    "volumes": [{"name": "data", "emptyDir": {}}],
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
