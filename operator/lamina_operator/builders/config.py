"""The engine ConfigMap: settings every role shares, as LAMINA_* environment variables.

Pods load it whole with `envFrom`, and their template carries a hash of it, so changing an
engine setting rolls every pool (prefill and decode must agree on dtype, block size, SPEED and
the KV backend) while changing one pool's replicas or resources touches only that pool.
The Redis password is never here: pods read it from its Secret by reference.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from ..api import ServingDeploymentSpec
from ..constants import ENGINE_PORT, REDIS_PORT
from .names import Owner, child_name, config_map_name, metadata, service_host


def redis_url(owner: Owner, spec: ServingDeploymentSpec) -> str | None:
    """URL engines use for KV transfer: the managed Redis Service, or the user's Redis."""
    kv = spec.engine.kv_transfer
    if kv.backend != "redis":
        return None
    if kv.managed_redis:
        return f"redis://{service_host(owner, 'redis')}:{REDIS_PORT}/0"
    return kv.redis.url


def engine_env(owner: Owner, spec: ServingDeploymentSpec) -> dict[str, str]:
    """LAMINA_* settings for `lamina serve` (all string values; ConfigMap data)."""
    sched, speed, kv = spec.engine.scheduling, spec.engine.speed, spec.engine.kv_transfer
    env = {
        "LAMINA_DEPLOYMENT": owner.name,
        "LAMINA_SERVED_MODEL_NAME": spec.model.name,
        "LAMINA_MODEL_SOURCE": spec.model.source,
        "LAMINA_DTYPE": spec.model.dtype,
        "LAMINA_SCHEDULING_POLICY": sched.policy,
        "LAMINA_TOKEN_BUDGET": str(sched.token_budget),
        "LAMINA_COHORT_TOKEN_BUDGET": str(sched.cohort_token_budget),
        "LAMINA_MAX_LAYER_GROUPS": str(sched.max_layer_groups),
        "LAMINA_MAX_NUM_SEQS": str(sched.max_num_seqs),
        "LAMINA_BLOCK_SIZE": str(sched.block_size),
        "LAMINA_SPEED": "true" if speed.enabled else "false",
        "LAMINA_SPEED_ANCHOR_TOKENS": str(speed.anchor_tokens),
        "LAMINA_KV_BACKEND": kv.backend,
        "LAMINA_KV_TTL_SECONDS": str(kv.ttl_seconds),
        "LAMINA_PREFILL_SERVICE": f"{service_host(owner, 'prefill')}:{ENGINE_PORT}",
        "LAMINA_DECODE_SERVICE": f"{service_host(owner, 'decode')}:{ENGINE_PORT}",
    }
    if speed.enabled and speed.prefill_layers is not None:
        env["LAMINA_SPEED_PREFILL_LAYERS"] = str(speed.prefill_layers)
    if speed.enabled and speed.prefill_layers_percent is not None:
        env["LAMINA_SPEED_PREFILL_LAYERS_PERCENT"] = str(speed.prefill_layers_percent)
    url = redis_url(owner, spec)
    if url is not None:
        env["LAMINA_KV_REDIS_URL"] = url
    return env


def build_config_map(owner: Owner, spec: ServingDeploymentSpec) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(owner, config_map_name(owner), "config"),
        "data": engine_env(owner, spec),
    }


def config_hash(config_map: dict[str, Any]) -> str:
    """16 hex chars of sha256 over the ConfigMap data: the pod-template annotation value."""
    canonical = json.dumps(config_map.get("data", {}), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def password_secret(owner: Owner, spec: ServingDeploymentSpec) -> tuple[str, str] | None:
    """(Secret name, key) holding the Redis password, or None when there is none."""
    kv = spec.engine.kv_transfer
    if kv.backend != "redis":
        return None
    if kv.managed_redis:
        return child_name(owner, "redis-auth"), "password"
    ref = kv.redis.password_secret_ref
    return (ref.name, ref.key) if ref is not None else None
