"""Prefill, decode and router Deployments: `lamina serve --role ROLE` with the engine settings.

Command line of every role (flags the engine's `lamina serve` accepts):
    lamina serve --role prefill|decode|router --model M
                 --served-model-name NAME --host 0.0.0.0 --port 8000 [router flags] [extraArgs]
Router flags: --prefill-service HOST:8001 --decode-service HOST:8001 --prefill-picker P
              --decode-picker D --disaggregation-min-prompt-tokens N --load-decay-seconds S
(the router reaches engine pods on their internal port, through the headless pool Services).
Every role also gets, in its container env: LAMINA_INTERNAL_PORT=8001 and LAMINA_INTERNAL_KEY
from Secret `<name>-internal` (internal_key.py), and, with spec.router.apiKeySecret,
LAMINA_API_KEY from that Secret: on the router, and on engine pods too, whose public port
serves the OpenAI API as well (unified mode) and must not be a way around the key.
Everything else comes from the engine ConfigMap as LAMINA_* variables (see config.py); each
flag and variable is a setting of the engine's ServeConfig, and
tests/test_operator_engine_contract.py parses what these builders write with the engine's CLI.
"""

from __future__ import annotations

from typing import Any

from ..api import ServingDeploymentSpec
from ..api.common import PodPlacement
from ..constants import CONFIG_HASH_ANNOTATION, ENGINE_PORT, INTERNAL_PORT
from . import pods
from .config import password_secret, redis_ca_volume
from .internal_key import FINGERPRINT_ANNOTATION, SECRET_KEY
from .model_fetch import init_containers
from .names import (
    Owner,
    child_name,
    config_map_name,
    internal_secret_name,
    labels,
    metadata,
    selector_labels,
    service_host,
)

# Seconds a pod may take to become healthy: engines load checkpoints (tens of GB), routers don't.
ENGINE_STARTUP_SECONDS = 3600
ROUTER_STARTUP_SECONDS = 300


def engine_args(owner: Owner, spec: ServingDeploymentSpec, role: str) -> list[str]:
    """Arguments after `lamina`: the full `serve` command line of one role."""
    model_flags, _ = pods.model_location(spec.model.source)
    args = ["serve", "--role", role, *model_flags]
    args += [
        "--served-model-name",
        spec.model.name,
        "--host",
        "0.0.0.0",
        "--port",
        str(ENGINE_PORT),
    ]
    if role == "router":
        routing = spec.router.routing
        args += [
            "--prefill-service", f"{service_host(owner, 'prefill')}:{INTERNAL_PORT}",
            "--decode-service", f"{service_host(owner, 'decode')}:{INTERNAL_PORT}",
            "--prefill-picker", routing.prefill_picker,
            "--decode-picker", routing.decode_picker,
            "--disaggregation-min-prompt-tokens", str(routing.disaggregation_min_prompt_tokens),
            "--load-decay-seconds", str(routing.load_decay_seconds),
        ]  # fmt: skip
    return args + list(_placement(spec, role).extra_args)


def _placement(spec: ServingDeploymentSpec, role: str) -> PodPlacement:
    return {"prefill": spec.prefill, "decode": spec.decode, "router": spec.router}[role]


def _secret_env(name: str, secret: str, key: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def auth_env(owner: Owner, spec: ServingDeploymentSpec) -> list[dict[str, Any]]:
    """The internal port and key, and the public API key when the spec names one."""
    env = [
        {"name": "LAMINA_INTERNAL_PORT", "value": str(INTERNAL_PORT)},
        _secret_env("LAMINA_INTERNAL_KEY", internal_secret_name(owner), SECRET_KEY),
    ]
    ref = spec.router.api_key_secret
    if ref is not None:
        env.append(_secret_env("LAMINA_API_KEY", ref.name, ref.key))
    return env


def build_pool_deployment(
    owner: Owner,
    spec: ServingDeploymentSpec,
    role: str,
    config_hash: str,
    internal_key_fingerprint: str | None = None,
) -> dict[str, Any]:
    """The Deployment of one role. `config_hash` is the engine ConfigMap's hash and
    `internal_key_fingerprint` the internal key's (internal_key.py): either changing rolls pods.
    """
    placement = _placement(spec, role)
    is_engine = role != "router"
    _, model_volume = pods.model_location(spec.model.source)
    # The router reads the model only for its tokenizer and config; it needs no /dev/shm.
    vols, mounts = pods.volumes(model_volume, shm=is_engine)
    # Only prefill and decode pods talk to Redis: the router gets neither password nor CA.
    password = password_secret(owner, spec) if is_engine else None
    ca = redis_ca_volume(spec) if is_engine else None
    if ca is not None:
        vols.append(ca[0])
        mounts.append(ca[1])
    defaults = pods.ENGINE_DEFAULT_RESOURCES if is_engine else pods.ROUTER_DEFAULT_RESOURCES
    container: dict[str, Any] = {
        "name": "engine",
        "image": spec.engine.image,
        "imagePullPolicy": spec.engine.image_pull_policy,
        "command": ["lamina"],
        "args": engine_args(owner, spec, role),
        # `http` first: the autoscaler reads /metrics on a pod's first port.
        "ports": [
            {"name": "http", "containerPort": ENGINE_PORT, "protocol": "TCP"},
            {"name": "internal", "containerPort": INTERNAL_PORT, "protocol": "TCP"},
        ],
        "envFrom": [{"configMapRef": {"name": config_map_name(owner)}}],
        "env": pods.base_env(password) + auth_env(owner, spec) + pods.user_env(placement),
        "resources": pods.resources(placement, defaults),
        **pods.probes(ENGINE_STARTUP_SECONDS if is_engine else ROUTER_STARTUP_SECONDS),
        "securityContext": pods.container_security_context(),
        "volumeMounts": mounts,
    }
    annotations = {
        CONFIG_HASH_ANNOTATION: config_hash,
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(ENGINE_PORT),
        "prometheus.io/path": "/metrics",
    }
    if internal_key_fingerprint is not None:
        annotations[FINGERPRINT_ANNOTATION] = internal_key_fingerprint
    template = {
        "metadata": {"labels": labels(owner, role, role), "annotations": annotations},
        "spec": {
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            # Engines drain in-flight requests and KV reads on SIGTERM before exiting.
            "terminationGracePeriodSeconds": 120 if is_engine else 30,
            "securityContext": pods.pod_security_context(),
            **init_containers(spec.model, container),  # fetches hf://, s3://, builtin://
            "containers": [container],
            "volumes": vols,
            **pods.scheduling(placement),
        },
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(owner, child_name(owner, role), role, role),
        "spec": {
            "replicas": placement.replicas,
            "selector": {"matchLabels": selector_labels(owner, role)},
            # Surge, never drop below the desired count: a rollout must not cut capacity.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "revisionHistoryLimit": 5,
            "progressDeadlineSeconds": ENGINE_STARTUP_SECONDS if is_engine else 600,
            "template": template,
        },
    }
