"""What the autoscaler reads from the API server: the pools' Deployments and ready pods.

A pod is a metrics target when it is Ready, has an IP and is not being deleted; its /metrics
URL uses the engine container's first port (ENGINE_PORT when none is declared), its drain
endpoint the port named `internal` (else that port + 1), and how long it has been Ready comes
from its Ready condition's lastTransitionTime.
"""

from __future__ import annotations

import calendar
import time
from typing import Any

from ..api import ServingDeploymentSpec
from ..constants import DEPLOYMENT_LABEL, ENGINE_PORT, ROLE_LABEL
from ..kube import KubeClient
from .scrape import PodTarget

GPU = "nvidia.com/gpu"


def parse_time(stamp: str | None) -> float | None:
    if not stamp:
        return None
    try:
        return float(calendar.timegm(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S")))
    except ValueError:
        return None


def format_time(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def gpus_per_replica(spec: ServingDeploymentSpec, pool: str) -> int:
    limits = getattr(spec, pool).resources.limits
    value = limits.get(GPU, 0)
    try:
        return int(float(value))
    except ValueError:  # a quantity such as "1k" for GPUs is not meaningful: count none
        return 0


def _ready_since(pod: dict[str, Any]) -> float | None:
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return (
                parse_time(cond.get("lastTransitionTime")) if cond.get("status") == "True" else None
            )
    return None


def _port(pod: dict[str, Any], name: str | None = None) -> int | None:
    """The engine container's port called `name`, or its first port (None: not declared)."""
    for container in (pod.get("spec") or {}).get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("containerPort") and (name is None or port.get("name") == name):
                return int(port["containerPort"])
    return None


def admin_url(pod: dict[str, Any]) -> str:
    """Base URL of a pod's internal port: the port named `internal`, else the public port + 1
    (`lamina serve`'s default; 8001 in Kubernetes)."""
    port = _port(pod, "internal") or (_port(pod) or ENGINE_PORT) + 1
    return f"http://{(pod.get('status') or {}).get('podIP')}:{port}"


def targets(
    client: KubeClient, namespace: str, name: str, role: str, now: float
) -> list[PodTarget]:
    out = []
    for pod in client.list("v1", "Pod", namespace, {DEPLOYMENT_LABEL: name, ROLE_LABEL: role}):
        meta, status = pod["metadata"], pod.get("status") or {}
        since = _ready_since(pod)
        if since is None or meta.get("deletionTimestamp") or not status.get("podIP"):
            continue
        url = f"http://{status['podIP']}:{_port(pod) or ENGINE_PORT}/metrics"
        uid = meta.get("uid", meta["name"])
        out.append(PodTarget(meta["name"], uid, url, max(0.0, now - since), admin_url(pod)))
    return out


def replicas(deployment: dict[str, Any]) -> tuple[int, int, int]:
    """(desired, ready, starting) of a pool's Deployment."""
    desired = int((deployment.get("spec") or {}).get("replicas", 1))
    ready = int((deployment.get("status") or {}).get("readyReplicas") or 0)
    return desired, ready, max(0, desired - ready)
