"""Fixtures for the operator tests: example specs and an in-memory API server with one SD."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from lamina_operator.constants import API_VERSION, POLICY_KIND, SERVING_KIND
from lamina_operator.kube import MemoryKubeClient
from lamina_operator.reconcile import ListRecorder, Reconciler

NS = "serving"

# A Qwen3-30B-A3B-like deployment on GPUs with SPEED, layered prefill and an external Redis.
GPU_SPEC: dict[str, Any] = {
    "model": {"name": "qwen3-30b-a3b", "source": "hf://Qwen/Qwen3-30B-A3B@main", "numLayers": 48},
    "engine": {
        "image": "registry.example/lamina-engine:1.2.3",
        "scheduling": {"policy": "layered", "cohortTokenBudget": 8192, "maxLayerGroups": 16},
        "speed": {"enabled": True, "prefillLayers": 36},
        "kvTransfer": {
            "backend": "redis",
            "redis": {
                "url": "redis://redis.kv.svc:6379/0",
                "passwordSecretRef": {"name": "kv-redis", "key": "password"},
            },
        },
    },
    "prefill": {
        "replicas": 2,
        "resources": {"limits": {"nvidia.com/gpu": 1}, "requests": {"cpu": "8", "memory": "64Gi"}},
        "nodeSelector": {"gpu": "h100"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "extraArgs": ["--max-model-len", "32768"],
        "env": [{"name": "NCCL_DEBUG", "value": "WARN"}],
    },
    "decode": {"replicas": 3, "resources": {"limits": {"nvidia.com/gpu": 1}}},
    "router": {"replicas": 2, "routing": {"disaggregationMinPromptTokens": 64}},
    "autoscaling": {"policyRef": {"name": "latency-slo"}},
}
MINIMAL_SPEC: dict[str, Any] = {"model": {"name": "demo", "source": "pvc://models/demo-moe"}}
POLICY_SPEC: dict[str, Any] = {
    "ttft": {"percentile": 90, "targetMilliseconds": 500},
    "tbt": {"percentile": 90, "targetMilliseconds": 50},
    "prefill": {"minReplicas": 1, "maxReplicas": 8},
    "decode": {"minReplicas": 1, "maxReplicas": 16},
    "gpuBudget": 24,
}


@pytest.fixture
def gpu_spec() -> dict[str, Any]:
    return copy.deepcopy(GPU_SPEC)


@pytest.fixture
def minimal_spec() -> dict[str, Any]:
    return copy.deepcopy(MINIMAL_SPEC)


@pytest.fixture
def cluster() -> MemoryKubeClient:
    """An API server with the Redis Secret and the policy the GPU example references."""
    client = MemoryKubeClient()
    client.create(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "kv-redis", "namespace": NS},
            "stringData": {"password": "s3cret"},
        }
    )
    client.create(
        {
            "apiVersion": API_VERSION,
            "kind": POLICY_KIND,
            "metadata": {"name": "latency-slo", "namespace": NS},
            "spec": copy.deepcopy(POLICY_SPEC),
        }
    )
    return client


def add_sd(client: MemoryKubeClient, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return client.create(
        {
            "apiVersion": API_VERSION,
            "kind": SERVING_KIND,
            "metadata": {"name": name, "namespace": NS},
            "spec": copy.deepcopy(spec),
        }
    )


class Clock:
    """A settable clock so timestamps are deterministic."""

    def __init__(self) -> None:
        self.now = "2026-01-01T00:00:00Z"

    def __call__(self) -> str:
        return self.now


@pytest.fixture
def recorder() -> ListRecorder:
    return ListRecorder()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def reconciler(cluster: MemoryKubeClient, recorder: ListRecorder, clock: Clock) -> Reconciler:
    return Reconciler(cluster, recorder, clock)


@pytest.fixture
def sd_factory(cluster: MemoryKubeClient):
    return lambda name, spec: add_sd(cluster, name, spec)
