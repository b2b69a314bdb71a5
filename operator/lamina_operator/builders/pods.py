"""Pieces of the engine pod template: security contexts, volumes, probes, env, scheduling.

Secure by default: non-root uid, read-only root filesystem (writable emptyDirs for /tmp and the
model cache), no privilege escalation, all capabilities dropped, RuntimeDefault seccomp, no
service-account token (the engine never calls the Kubernetes API).
"""

from __future__ import annotations

from typing import Any

from ..api.common import PodPlacement
from ..constants import ENGINE_UID

CACHE_DIR = "/var/cache/lamina"  # HF downloads and compiled kernels land here (emptyDir)
MODELS_DIR = "/models"  # pvc:// sources are mounted here, read-only; fetched ones land here
FETCHED_SCHEMES = ("hf", "s3", "builtin")  # sources `lamina fetch-model` downloads
FETCHED_MODEL_DIR = f"{MODELS_DIR}/checkpoint"


def pod_security_context(uid: int = ENGINE_UID) -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": uid,
        "fsGroup": uid,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }


def http_probe(
    period: int, failures: int, timeout: int = 3, path: str = "/health"
) -> dict[str, Any]:
    """GET `path` on the named `http` port."""
    return {
        "httpGet": {"path": path, "port": "http", "scheme": "HTTP"},
        "periodSeconds": period,
        "timeoutSeconds": timeout,
        "failureThreshold": failures,
        "successThreshold": 1,
    }


def probes(startup_budget_seconds: int) -> dict[str, Any]:
    """Readiness (5 s), liveness (10 s × 6) and a startup probe covering model loading.

    The liveness probe only starts once the startup probe passed, so a slow checkpoint load
    (up to `startup_budget_seconds`) never gets the container killed. Readiness is /health
    (503 while loading or draining: out of the Service); liveness is /livez, which stays 200
    while draining, so a drain may take as long as the autoscaler's drain timeout allows.
    """
    return {
        "readinessProbe": http_probe(period=5, failures=3),
        "livenessProbe": http_probe(period=10, failures=6, timeout=5, path="/livez"),
        "startupProbe": http_probe(period=10, failures=max(1, startup_budget_seconds // 10)),
    }


def model_location(source: str) -> tuple[list[str], dict[str, Any] | None]:
    """`lamina serve` flags naming the checkpoint, and the volume at /models (if any).

    pvc://claim/path -> --model /models/path, the claim mounted read-only. hf://, s3:// and
    builtin:// sources -> --model /models/checkpoint on an emptyDir that the pod's fetch-model
    init container fills (model_fetch.py); an init container restarted after a failure resumes
    into the same emptyDir.
    """
    scheme, rest = source.split("://", 1)
    if scheme == "pvc":
        claim, _, path = rest.partition("/")
        volume = {"name": "model", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
        local = f"{MODELS_DIR}/{path}".rstrip("/") if path.strip("/") else MODELS_DIR
        return ["--model", local], volume
    if scheme in FETCHED_SCHEMES:
        return ["--model", FETCHED_MODEL_DIR], {"name": "model", "emptyDir": {}}
    raise ValueError(f"model source {source!r}: unknown scheme {scheme!r}")


def volumes(model_volume: dict[str, Any] | None, shm: bool) -> tuple[list, list]:
    """(volumes, volumeMounts): writable emptyDirs, /dev/shm for torch, the model volume
    (mounted read-only: only the fetch-model init container writes it)."""
    vols: list[dict[str, Any]] = [
        {"name": "tmp", "emptyDir": {}},
        {"name": "cache", "emptyDir": {}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "cache", "mountPath": CACHE_DIR},
    ]
    if shm:
        vols.append({"name": "shm", "emptyDir": {"medium": "Memory"}})
        mounts.append({"name": "shm", "mountPath": "/dev/shm"})
    if model_volume is not None:
        vols.append(model_volume)
        mounts.append({"name": "model", "mountPath": MODELS_DIR, "readOnly": True})
    return vols, mounts


def base_env(password: tuple[str, str] | None) -> list[dict[str, Any]]:
    """Env every engine container gets besides the ConfigMap: identity, cache dirs, password.
    Every LAMINA_* name is a `lamina serve` setting (tests/test_operator_engine_contract.py)."""
    env: list[dict[str, Any]] = [
        {"name": "LAMINA_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "HOME", "value": "/tmp"},
        {"name": "XDG_CACHE_HOME", "value": CACHE_DIR},
        {"name": "HF_HOME", "value": f"{CACHE_DIR}/huggingface"},
    ]
    if password is not None:
        name, key = password
        env.append(
            {
                "name": "LAMINA_KV_REDIS_PASSWORD",
                "valueFrom": {"secretKeyRef": {"name": name, "key": key}},
            }
        )
    return env


def user_env(placement: PodPlacement) -> list[dict[str, Any]]:
    """The pool's extra env, after ours, so a user can override a LAMINA_* value on purpose."""
    return [var.model_dump(by_alias=True, exclude_none=True) for var in placement.env]


# cpu and memory a pod gets when its spec names neither in requests nor limits: Burstable QoS
# instead of BestEffort, so a pod is never the first evicted under node pressure and never
# starved of CPU by a busy neighbour. Requests are what a pod needs to start and serve a small
# model (Python, torch, a tokenizer; the demo stack fits a 2-core node); a GPU pool sizes its
# own (the examples do: a checkpoint of tens of GB loads through host memory). Limits bound a
# leak: engines 64Gi (the checkpoint's pages while it loads, pinned KV staging buffers), the
# router 8Gi. No CPU limit: CFS throttling would stall a decode step mid-batch (every running
# request's next token), whereas a memory limit only bounds a leak.
ENGINE_DEFAULT_RESOURCES = {
    "requests": {"cpu": "500m", "memory": "2Gi"},
    "limits": {"memory": "64Gi"},
}
ROUTER_DEFAULT_RESOURCES = {
    "requests": {"cpu": "250m", "memory": "512Mi"},
    "limits": {"memory": "8Gi"},
}


def resources(placement: PodPlacement, defaults: dict[str, dict[str, str]]) -> dict[str, Any]:
    """Resource maps with quantities as strings (the apiserver's canonical form for ints).

    A resource (cpu, memory) the user names in requests or limits is left exactly as written;
    one they name nowhere gets its request and limit from `defaults`, so a default limit can
    never fall below a request the user set.
    """
    res = placement.resources
    out: dict[str, dict[str, str]] = {
        "requests": {k: str(v) for k, v in res.requests.items()},
        "limits": {k: str(v) for k, v in res.limits.items()},
    }
    named = set(res.requests) | set(res.limits)
    for section, values in defaults.items():
        for name, quantity in values.items():
            if name not in named:
                out[section][name] = quantity
    return {section: values for section, values in out.items() if values}


def scheduling(placement: PodPlacement) -> dict[str, Any]:
    """nodeSelector / tolerations / affinity, omitted when empty."""
    out: dict[str, Any] = {}
    if placement.node_selector:
        out["nodeSelector"] = dict(placement.node_selector)
    if placement.tolerations:
        out["tolerations"] = [
            t.model_dump(by_alias=True, exclude_none=True) for t in placement.tolerations
        ]
    if placement.affinity:
        out["affinity"] = placement.affinity
    return out
