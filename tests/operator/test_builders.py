"""Builders: the manifests a user's pods actually run with (command line, env, security...)."""

from __future__ import annotations

import kubernetes_validate
import pytest

from lamina_operator.api import ServingDeploymentSpec
from lamina_operator.builders import (
    BuildContext,
    Owner,
    build_children,
    build_config_map,
    build_pool_deployment,
    config_hash,
)
from lamina_operator.constants import CONFIG_HASH_ANNOTATION

OWNER = Owner(name="qwen", namespace="serving", uid="0000-1111")


def _children(spec_dict, **ctx):
    spec = ServingDeploymentSpec.model_validate(spec_dict)
    built = build_children(OWNER, spec, BuildContext(redis_password="pw-fixed", **ctx))
    return {(d.manifest["kind"], d.manifest["metadata"]["name"]): d for d in built}


def _container(deployment):
    return deployment["spec"]["template"]["spec"]["containers"][0]


def _env(container):
    return {e["name"]: e for e in container["env"]}


def test_prefill_command_line_and_resources(gpu_spec):
    dep = _children(gpu_spec)[("Deployment", "qwen-prefill")].manifest
    c = _container(dep)
    assert c["command"] == ["lamina"]
    assert c["args"] == [
        "serve", "--role", "prefill", "--model", "/models/checkpoint",
        "--served-model-name", "qwen3-30b-a3b", "--host", "0.0.0.0", "--port", "8000",
        "--max-model-len", "32768",
    ]  # fmt: skip
    assert dep["spec"]["replicas"] == 2
    assert c["resources"] == {
        "requests": {"cpu": "8", "memory": "64Gi"},
        "limits": {"nvidia.com/gpu": "1"},
    }
    pod = dep["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"gpu": "h100"}
    assert pod["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert c["image"] == "registry.example/lamina-engine:1.2.3"


def test_router_flags_point_at_pool_services(gpu_spec):
    c = _container(_children(gpu_spec)[("Deployment", "qwen-router")].manifest)
    args = c["args"]
    assert args[:3] == ["serve", "--role", "router"]
    flag = {args[i]: args[i + 1] for i in range(3, len(args) - 1, 2)}
    # the pools' internal port: the router's calls to engine pods never use the public one
    assert flag["--prefill-service"] == "qwen-prefill.serving.svc:8001"
    assert flag["--decode-service"] == "qwen-decode.serving.svc:8001"
    assert flag["--disaggregation-min-prompt-tokens"] == "64"
    assert flag["--prefill-picker"] == "prefix-load"


def test_password_only_by_secret_reference(gpu_spec):
    built = _children(gpu_spec)
    for role in ("prefill", "decode"):
        env = _env(_container(built[("Deployment", f"qwen-{role}")].manifest))
        assert env["LAMINA_KV_REDIS_PASSWORD"] == {
            "name": "LAMINA_KV_REDIS_PASSWORD",
            "valueFrom": {"secretKeyRef": {"name": "kv-redis", "key": "password"}},
        }
    # the router never talks to Redis: it does not get the password
    assert "LAMINA_KV_REDIS_PASSWORD" not in _env(
        _container(built[("Deployment", "qwen-router")].manifest)
    )
    # user env comes after ours
    prefill_env = _container(built[("Deployment", "qwen-prefill")].manifest)["env"]
    assert prefill_env[-1] == {"name": "NCCL_DEBUG", "value": "WARN"}
    assert "s3cret" not in str(built)


def test_engine_config_map_carries_settings(gpu_spec):
    built = _children(gpu_spec)
    data = built[("ConfigMap", "qwen-engine")].manifest["data"]
    assert data["LAMINA_SCHEDULING_POLICY"] == "layered"
    assert data["LAMINA_LAYERED_BUDGET"] == "8192"
    assert data["LAMINA_SPEED_PREFILL_LAYERS"] == "36"
    assert data["LAMINA_SPEED_ANCHORS"] == "1"
    assert data["LAMINA_KV_BACKEND"] == "redis"
    assert data["LAMINA_KV_REDIS_URL"] == "redis://redis.kv.svc:6379/0"
    assert all(isinstance(v, str) for v in data.values())
    c = _container(built[("Deployment", "qwen-decode")].manifest)
    assert c["envFrom"] == [{"configMapRef": {"name": "qwen-engine"}}]


def test_probes_and_security(gpu_spec):
    dep = _children(gpu_spec)[("Deployment", "qwen-decode")].manifest
    pod, c = dep["spec"]["template"]["spec"], _container(dep)
    paths = {"readinessProbe": "/health", "livenessProbe": "/livez", "startupProbe": "/health"}
    for probe, path in paths.items():  # liveness holds while draining; readiness does not
        assert c[probe]["httpGet"] == {"path": path, "port": "http", "scheme": "HTTP"}
    # probes stay on the public port; the internal one is declared second
    assert c["ports"] == [
        {"name": "http", "containerPort": 8000, "protocol": "TCP"},
        {"name": "internal", "containerPort": 8001, "protocol": "TCP"},
    ]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert c["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert {"/tmp", "/var/cache/lamina", "/dev/shm"} <= mounts
    assert pod["automountServiceAccountToken"] is False


def test_labels_selector_and_owner(gpu_spec):
    for (kind, name), want in _children(gpu_spec).items():
        meta = want.manifest["metadata"]
        assert meta["ownerReferences"] == [
            {
                "apiVersion": "lamina.dev/v1alpha1",
                "kind": "ServingDeployment",
                "name": "qwen",
                "uid": "0000-1111",
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ], (kind, name)
        assert meta["labels"]["lamina.dev/deployment"] == "qwen"
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "lamina-operator"
        assert meta["namespace"] == "serving"
    dep = _children(gpu_spec)[("Deployment", "qwen-decode")].manifest
    assert dep["spec"]["selector"]["matchLabels"] == {
        "lamina.dev/deployment": "qwen",
        "lamina.dev/role": "decode",
    }
    assert dep["spec"]["template"]["metadata"]["labels"]["lamina.dev/role"] == "decode"


def test_config_map_translates_crd_names_to_engine_settings(minimal_spec):
    minimal_spec["engine"] = {
        "scheduling": {"tokenBudget": 64, "maxNumSeqs": 256, "maxLayerGroups": 4},
        "speed": {"enabled": True, "prefillLayersPercent": 75, "anchorTokens": 0},
    }
    data = _children(minimal_spec)[("ConfigMap", "qwen-engine")].manifest["data"]
    # a budget below max_num_seqs is raised to it: every running request decodes each step
    assert data["LAMINA_MAX_NUM_BATCHED_TOKENS"] == "256"
    assert data["LAMINA_LAYERED_MAX_GROUPS"] == "4"
    assert data["LAMINA_SPEED_PREFILL_LAYERS"] == "0.75"  # a fraction: the engine reads 0.75 * L
    assert data["LAMINA_SPEED_ANCHORS"] == "0"
    # identity and the router's backends travel as flags only; the source became --model
    for gone in ("LAMINA_MODEL_SOURCE", "LAMINA_SERVED_MODEL_NAME", "LAMINA_PREFILL_SERVICE"):
        assert gone not in data


def test_pvc_source_is_mounted_read_only(minimal_spec):
    dep = _children(minimal_spec)[("Deployment", "qwen-prefill")].manifest
    c, pod = _container(dep), dep["spec"]["template"]["spec"]
    assert c["args"][c["args"].index("--model") + 1] == "/models/demo-moe"
    assert {
        "name": "model",
        "persistentVolumeClaim": {"claimName": "models", "readOnly": True},
    } in pod["volumes"]
    assert {"name": "model", "mountPath": "/models", "readOnly": True} in c["volumeMounts"]


def test_minimal_spec_gets_managed_redis_with_generated_secret(minimal_spec):
    built = _children(minimal_spec)
    secret = built[("Secret", "qwen-redis-auth")]
    assert secret.create_only and secret.manifest["stringData"] == {"password": "pw-fixed"}
    redis = built[("Deployment", "qwen-redis")].manifest
    c = _container(redis)
    assert c["args"][-2:] == ["--requirepass", "$(REDIS_PASSWORD)"]
    assert c["env"][0]["valueFrom"]["secretKeyRef"] == {
        "name": "qwen-redis-auth",
        "key": "password",
    }
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    engine_env = _env(_container(built[("Deployment", "qwen-decode")].manifest))
    assert engine_env["LAMINA_KV_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == (
        "qwen-redis-auth"
    )
    cm = built[("ConfigMap", "qwen-engine")].manifest["data"]
    assert cm["LAMINA_KV_REDIS_URL"] == "redis://qwen-redis.serving.svc:6379/0"
    assert ("Service", "qwen-redis") in built


def test_config_hash_rolls_on_engine_change_only(gpu_spec):
    spec = ServingDeploymentSpec.model_validate(gpu_spec)
    digest = config_hash(build_config_map(OWNER, spec))
    dep = build_pool_deployment(OWNER, spec, "decode", digest)
    assert dep["spec"]["template"]["metadata"]["annotations"][CONFIG_HASH_ANNOTATION] == digest
    gpu_spec["prefill"]["replicas"] = 5
    same = ServingDeploymentSpec.model_validate(gpu_spec)
    assert config_hash(build_config_map(OWNER, same)) == digest
    gpu_spec["engine"]["scheduling"]["policy"] = "chunked"
    changed = ServingDeploymentSpec.model_validate(gpu_spec)
    assert config_hash(build_config_map(OWNER, changed)) != digest


def test_services_and_pdbs(gpu_spec):
    built = _children(gpu_spec, pdb_api_version="policy/v1beta1")
    router = built[("Service", "qwen-router")].manifest["spec"]
    assert router["type"] == "ClusterIP" and router["ports"][0]["port"] == 8000
    assert built[("Service", "qwen-decode")].manifest["spec"]["clusterIP"] == "None"
    pdb = built[("PodDisruptionBudget", "qwen-prefill")].manifest
    assert pdb["apiVersion"] == "policy/v1beta1" and pdb["spec"]["maxUnavailable"] == 1


@pytest.mark.parametrize("example", ["gpu_spec", "minimal_spec"])
def test_children_are_valid_kubernetes_objects(example, request):
    for want in _children(request.getfixturevalue(example)).values():
        # strict: unknown fields (a typo such as `readinesProbe`) fail too
        kubernetes_validate.validate(want.manifest, "1.25", strict=True)
