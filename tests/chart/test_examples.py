"""manifests/ examples: custom resources valid against the CRDs' schemas, the rest against
Kubernetes' own schemas, and the chart's CRD copies identical to crds/."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from chart_helpers import CHART, REPO, crd_schemas

CRD_DIR = REPO / "crds"
EXAMPLES = sorted((REPO / "manifests").glob("*.yaml"))


def example_docs() -> list[tuple[str, dict]]:
    return [
        (f"{p.name}:{doc['kind']}/{doc['metadata']['name']}", doc)
        for p in EXAMPLES
        for doc in yaml.safe_load_all(p.read_text())
        if doc
    ]


def test_the_promised_examples_exist():
    names = {p.name for p in EXAMPLES}
    assert {"minimal.yaml", "qwen3-30b-a3b-gpu.yaml", "external-redis.yaml"} <= names
    assert "autoscalingpolicy.yaml" in names


@pytest.mark.parametrize(
    "label, doc", example_docs(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_example_is_valid(label, doc):
    if doc["apiVersion"].startswith("lamina.dev/"):
        schemas = crd_schemas()
        key = (doc["apiVersion"], doc["kind"])
        assert key in schemas, f"{label}: no CRD in crds/ serves {key}; run `make crds`"
        # OpenAPI v3 schemas use draft-4 keywords (boolean exclusiveMinimum); x- keys are ignored.
        jsonschema.Draft4Validator(schemas[key]).validate(doc)
    else:
        kubernetes_validate.validate(doc, "1.30", strict=True)


def test_external_redis_example_ships_the_secret_it_references():
    docs = yaml.safe_load_all((REPO / "manifests" / "external-redis.yaml").read_text())
    docs = [d for d in docs if d]
    (sd,) = [d for d in docs if d["kind"] == "ServingDeployment"]
    ref = sd["spec"]["engine"]["kvTransfer"]["redis"]["passwordSecretRef"]
    secrets = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Secret"}
    assert ref["name"] in secrets
    assert ref["key"] in secrets[ref["name"]].get("stringData", {}) | secrets[ref["name"]].get(
        "data", {}
    )
    redis = sd["spec"]["engine"]["kvTransfer"]["redis"]
    assert "password" not in redis and "@" not in redis["url"], (
        "the Redis password must come from the Secret, never the spec or the URL"
    )


def test_gpu_example_uses_gpus_speed_and_layered_prefill():
    (sd,) = yaml.safe_load_all((REPO / "manifests" / "qwen3-30b-a3b-gpu.yaml").read_text())
    engine = sd["spec"]["engine"]
    assert engine["scheduling"]["policy"] == "layered"
    assert engine["speed"]["enabled"] is True
    for pool in ("prefill", "decode"):
        assert int(sd["spec"][pool]["resources"]["limits"]["nvidia.com/gpu"]) >= 1


def files_by_name(folder: Path, pattern: str) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob(pattern))}


def test_chart_crds_are_identical_to_the_generated_crds():
    generated = files_by_name(CRD_DIR, "*.yaml")
    assert generated, "crds/ is empty; run `make crds`"
    in_chart = files_by_name(CHART / "crds", "*.yaml")
    assert in_chart == generated, (
        "charts/lamina/crds/ differs from crds/; copy them: cp crds/*.yaml charts/lamina/crds/"
    )


def test_chart_dashboards_are_identical_to_manifests_dashboards():
    shipped = files_by_name(REPO / "manifests" / "dashboards", "*.json")
    in_chart = files_by_name(CHART / "dashboards", "*.json")
    assert in_chart == shipped, (
        "charts/lamina/dashboards/ differs from manifests/dashboards/; copy the JSON files over"
    )
