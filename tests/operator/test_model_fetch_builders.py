"""hf://, s3:// and builtin:// sources: every pod gets a fetch-model init container (same image
and security context as its main container, credentials by Secret reference only) that fills
the emptyDir the main container loads from, read-only."""

from __future__ import annotations

import kubernetes_validate
import pytest
from pydantic import ValidationError

from lamina_operator.api import ServingDeploymentSpec
from lamina_operator.builders import BuildContext, Owner, build_children

OWNER = Owner(name="qwen", namespace="serving", uid="0000-1111")
ROLES = ("prefill", "decode", "router")


def pod_specs(spec_dict) -> dict[str, dict]:
    spec = ServingDeploymentSpec.model_validate(spec_dict)
    built = [d.manifest for d in build_children(OWNER, spec, BuildContext(redis_password="pw"))]
    for m in built:
        kubernetes_validate.validate(m, "1.25", strict=True)
    return {
        m["metadata"]["name"].removeprefix("qwen-"): m["spec"]["template"]["spec"]
        for m in built
        if m["kind"] == "Deployment" and m["metadata"]["name"].removeprefix("qwen-") in ROLES
    }


def env_of(container) -> dict[str, dict]:
    return {v["name"]: v for v in container["env"]}


def test_hf_source_with_a_token_secret(gpu_spec):
    gpu_spec["model"]["hfTokenSecret"] = {"name": "hf-token"}
    for role, pod in pod_specs(gpu_spec).items():
        (init,), (main,) = pod["initContainers"], pod["containers"]
        assert init["name"] == "fetch-model" and init["command"] == ["lamina"]
        assert init["args"] == ["fetch-model", "hf://Qwen/Qwen3-30B-A3B@main", "/models/checkpoint"]
        assert main["args"][main["args"].index("--model") + 1] == "/models/checkpoint"
        for key in ("image", "imagePullPolicy", "securityContext", "resources"):
            assert init[key] == main[key], key
        assert init["terminationMessagePolicy"] == "FallbackToLogsOnError"
        env = env_of(init)
        assert env["HF_TOKEN"]["valueFrom"] == {
            "secretKeyRef": {"name": "hf-token", "key": "token"}
        }
        # none of the engine's LAMINA_* settings (Redis password, API keys) reach the fetcher
        assert not [name for name in env if name.startswith("LAMINA_")]
        assert env["HOME"]["value"] == "/tmp"
        if role == "prefill":  # the pool's own env reaches it too (e.g. HF_ENDPOINT)
            assert env["NCCL_DEBUG"]["value"] == "WARN"
        assert "HF_TOKEN" not in env_of(main)
        assert {"name": "model", "emptyDir": {}} in pod["volumes"]
        assert {"name": "model", "mountPath": "/models"} in init["volumeMounts"]
        assert {"name": "model", "mountPath": "/models", "readOnly": True} in main["volumeMounts"]


def test_s3_source_with_endpoint_and_keys(minimal_spec):
    minimal_spec["model"].update(
        source="s3://models/qwen3",
        s3={"endpoint": "http://minio.storage:9000", "secretName": "minio-keys"},
    )
    for pod in pod_specs(minimal_spec).values():
        (init,) = pod["initContainers"]
        assert init["args"] == ["fetch-model", "s3://models/qwen3", "/models/checkpoint"]
        env = env_of(init)
        assert env["AWS_ENDPOINT_URL_S3"]["value"] == "http://minio.storage:9000"
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            assert env[key]["valueFrom"] == {"secretKeyRef": {"name": "minio-keys", "key": key}}


def test_builtin_demo_needs_no_credentials(minimal_spec):
    minimal_spec["model"]["source"] = "builtin://lamina-demo"
    for pod in pod_specs(minimal_spec).values():
        (init,) = pod["initContainers"]
        assert init["args"] == ["fetch-model", "builtin://lamina-demo", "/models/checkpoint"]
        assert not [v for v in init["env"] if "valueFrom" in v and "secretKeyRef" in v["valueFrom"]]


def test_pvc_source_has_no_init_container(minimal_spec):
    for pod in pod_specs(minimal_spec).values():
        assert "initContainers" not in pod


@pytest.mark.parametrize(
    "model, message",
    [
        ({"source": "builtin://llama"}, "write e.g. builtin://lamina-demo"),
        (
            {"source": "pvc://models/q", "hfTokenSecret": {"name": "t"}},
            "model.hfTokenSecret is set but the source is pvc://",
        ),
        ({"source": "hf://org/name", "s3": {"secretName": "k"}}, "model.s3 is set but the source"),
        ({"source": "s3://bucket/q", "s3": {"endpoint": "minio:9000"}}, "endpoint"),
        ({"source": "s3://bucket/q", "s3": {"secretName": "Bad_Name"}}, "secretName"),
    ],
)
def test_bad_model_access_is_refused_with_a_message(model, message):
    with pytest.raises(ValidationError, match=message):
        ServingDeploymentSpec.model_validate({"model": {"name": "q", **model}})


def test_the_demo_manifest_needs_no_storage():
    """manifests/demo.yaml: the built-in model, every pod fetching it, no PersistentVolume."""
    from pathlib import Path

    import yaml

    path = Path(__file__).resolve().parents[2] / "manifests" / "demo.yaml"
    (doc,) = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert doc["kind"] == "ServingDeployment"
    pods = pod_specs(doc["spec"])
    assert sorted(pods) == sorted(ROLES)
    for pod in pods.values():
        assert pod["initContainers"][0]["args"][1] == "builtin://lamina-demo"
        assert not [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
