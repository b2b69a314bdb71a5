"""The init container that downloads an hf://, s3:// or builtin:// checkpoint before the engine
(or router) starts: `lamina fetch-model SOURCE /models/checkpoint`, same image, same security
context, writing the emptyDir the main container mounts read-only (pods.model_location).

A failed fetch exits non-zero with one line in its termination message (a wrong token, a
missing revision or bucket, a truncated file), so `kubectl describe pod` and the pod's status
say why the pod is stuck in Init instead of a crash loop without a reason. The kubelet retries
it with back-off into the same emptyDir, and the fetcher resumes what was already there.
"""

from __future__ import annotations

from typing import Any

from ..api.serving import ModelSpec
from .pods import FETCHED_MODEL_DIR, FETCHED_SCHEMES, MODELS_DIR


def credential_env(model: ModelSpec) -> list[dict[str, Any]]:
    """HF_TOKEN, or the S3 keys and endpoint, by Secret reference only."""
    env: list[dict[str, Any]] = []
    if model.hf_token_secret is not None:
        ref = model.hf_token_secret
        env.append(_secret("HF_TOKEN", ref.name, ref.key))
    if model.s3 is not None:
        if model.s3.endpoint is not None:
            env.append({"name": "AWS_ENDPOINT_URL_S3", "value": model.s3.endpoint})
        if model.s3.secret_name is not None:
            for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
                env.append(_secret(key, model.s3.secret_name, key))
    return env


def _secret(name: str, secret: str, key: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def init_containers(model: ModelSpec, main: dict[str, Any]) -> dict[str, Any]:
    """{"initContainers": [fetch-model]} for a fetched source, else {}. `main` is the pod's
    engine or router container: image, resources and securityContext are taken from it."""
    if model.source.split("://", 1)[0] not in FETCHED_SCHEMES:
        return {}
    # The fetcher reads no LAMINA_* setting, so none of the engine's (some are Secrets) reach
    # it; the rest (HOME, cache dirs, the pool's own env such as HF_ENDPOINT) does, after ours.
    env = credential_env(model) + [v for v in main["env"] if not v["name"].startswith("LAMINA_")]
    mounts = [m for m in main["volumeMounts"] if m["name"] in ("tmp", "cache")]
    mounts.append({"name": "model", "mountPath": MODELS_DIR})
    return {
        "initContainers": [
            {
                "name": "fetch-model",
                "image": main["image"],
                "imagePullPolicy": main["imagePullPolicy"],
                "command": ["lamina"],
                "args": ["fetch-model", model.source, FETCHED_MODEL_DIR],
                "env": env,
                "resources": main["resources"],
                "securityContext": main["securityContext"],
                "volumeMounts": mounts,
                # the one-line reason is in /dev/termination-log; the log tail if it died first
                "terminationMessagePolicy": "FallbackToLogsOnError",
            }
        ]
    }
