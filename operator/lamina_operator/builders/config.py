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
from ..constants import REDIS_PORT
from .names import Owner, child_name, config_map_name, metadata, service_host

# Where prefill and decode pods mount the CA of `redis.tls` (only that key of its Secret).
REDIS_CA_DIR = "/etc/lamina/redis-ca"
REDIS_CA_FILE = f"{REDIS_CA_DIR}/ca.crt"


def redis_url(owner: Owner, spec: ServingDeploymentSpec) -> str | None:
    """URL engines use for KV transfer: the managed Redis Service, or the user's Redis.

    With redis.tls the URL is rediss:// and names the mounted CA in its query
    (`?ssl_ca_certs=/etc/lamina/redis-ca/ca.crt`), which the engine's RedisTransportConfig
    reads as its CA bundle.
    """
    kv = spec.engine.kv_transfer
    if kv.backend != "redis":
        return None
    tls = kv.redis.tls is not None
    if kv.managed_redis:
        url = f"{'rediss' if tls else 'redis'}://{service_host(owner, 'redis')}:{REDIS_PORT}/0"
    else:
        url = kv.redis.url
    if tls:
        url += ("&" if "?" in url else "?") + f"ssl_ca_certs={REDIS_CA_FILE}"
    return url


def redis_ca_volume(spec: ServingDeploymentSpec) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(volume, mount) of the Redis CA for prefill and decode pods: only the CA key of the
    redis.tls Secret (never a managed Redis's private key), or None without TLS."""
    kv = spec.engine.kv_transfer
    if kv.backend != "redis" or kv.redis.tls is None:
        return None
    tls = kv.redis.tls
    items = [{"key": tls.ca_key, "path": REDIS_CA_FILE.rsplit("/", 1)[1]}]
    volume = {"name": "redis-ca", "secret": {"secretName": tls.secret_name, "items": items}}
    return volume, {"name": "redis-ca", "mountPath": REDIS_CA_DIR, "readOnly": True}


def engine_env(owner: Owner, spec: ServingDeploymentSpec) -> dict[str, str]:
    """LAMINA_* settings for `lamina serve` (all string values; ConfigMap data).

    The names are the engine's (`lamina serve --help` lists each flag with its variable); the
    CRD keeps its own user-facing names, and this is the one place that translates them.
    Per-process identity (role, model, served name, port, the router's backends) goes in flags.
    """
    sched, speed, kv = spec.engine.scheduling, spec.engine.speed, spec.engine.kv_transfer
    env = {
        "LAMINA_DEPLOYMENT": owner.name,
        "LAMINA_DTYPE": spec.model.dtype,
        "LAMINA_SCHEDULING_POLICY": sched.policy,
        # Every running request decodes one token per step, so the engine needs a step budget
        # of at least max_num_seqs; a smaller tokenBudget is raised to it.
        "LAMINA_MAX_NUM_BATCHED_TOKENS": str(max(sched.token_budget, sched.max_num_seqs)),
        "LAMINA_LAYERED_BUDGET": str(sched.cohort_token_budget),
        "LAMINA_LAYERED_MAX_GROUPS": str(sched.max_layer_groups),
        "LAMINA_MAX_NUM_SEQS": str(sched.max_num_seqs),
        "LAMINA_BLOCK_SIZE": str(sched.block_size),
        "LAMINA_KV_BACKEND": kv.backend,
        "LAMINA_KV_TTL_SECONDS": str(kv.ttl_seconds),
    }
    if speed.enabled:
        # the engine reads an int as a layer count K and a float as a fraction of the layers
        if speed.prefill_layers is not None:
            env["LAMINA_SPEED_PREFILL_LAYERS"] = str(speed.prefill_layers)
        elif speed.prefill_layers_percent is not None:
            env["LAMINA_SPEED_PREFILL_LAYERS"] = str(speed.prefill_layers_percent / 100)
        env["LAMINA_SPEED_ANCHORS"] = str(speed.anchor_tokens)
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
