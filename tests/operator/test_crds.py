"""The committed CRDs: in sync with the models, structural, and accepting what users write."""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from lamina_operator.crdgen import check_structural, render_all, to_structural, to_yaml

CRD_DIR = Path(__file__).resolve().parents[2] / "crds"


@functools.cache
def _load(name: str) -> dict:
    return yaml.safe_load((CRD_DIR / name).read_text())


def _committed(name: str) -> dict:
    return copy.deepcopy(_load(name))


def _schema(name: str) -> dict:
    return _committed(name)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def test_committed_crds_match_models():
    for name, crd in render_all().items():
        path = CRD_DIR / name
        assert path.exists(), f"{path} missing: run `lamina-operator crds --output crds/`"
        assert path.read_text() == to_yaml(crd), (
            f"{path} drifted from lamina_operator.api: run `lamina-operator crds --output crds/`"
        )


@pytest.mark.parametrize("name", sorted(render_all()))
def test_committed_schemas_are_structural(name):
    assert check_structural(_schema(name)) == []
    text = (CRD_DIR / name).read_text()
    for forbidden in ("$ref", "anyOf", "oneOf", "allOf", "x-kubernetes-validations", "const:"):
        assert forbidden not in text


def test_checker_catches_non_structural_schemas():
    bad = {
        "type": "object",
        "properties": {
            "a": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
            "b": {"type": "object"},
            "c": {"$ref": "#/$defs/X"},
            "d": {"type": "array"},
            "e": {"type": "object", "properties": {}, "additionalProperties": False},
        },
    }
    problems = "\n".join(check_structural(bad))
    for path in (".a: keyword 'anyOf'", ".a: missing type", ".b: object without properties",
                 ".c: keyword '$ref'", ".d: array without items", ".e: additionalProperties"):  # fmt: skip
        assert path in problems


def test_converter_rewrites_pydantic_idioms():
    schema = {
        "$defs": {"Inner": {"type": "object", "title": "Inner", "properties": {"x": {"type": "integer"}}}},
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "opt": {"anyOf": [{"$ref": "#/$defs/Inner"}, {"type": "null"}], "default": None,
                    "description": "d"},
            "qty": {"anyOf": [{"type": "integer"}, {"type": "string"}]},
            "free": {"type": "object", "additionalProperties": True},
        },
    }  # fmt: skip
    out = to_structural(schema)
    assert out["properties"]["opt"] == {
        "type": "object",
        "description": "d",
        "nullable": True,
        "properties": {"x": {"type": "integer"}},
    }
    assert out["properties"]["qty"] == {"x-kubernetes-int-or-string": True}
    assert out["properties"]["free"] == {
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": True,
    }
    assert "additionalProperties" not in out
    assert check_structural(out) == []


def test_serving_crd_shape():
    crd = _committed("lamina.dev_servingdeployments.yaml")
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    names = crd["spec"]["names"]
    assert names["shortNames"] == ["sd"] and names["kind"] == "ServingDeployment"
    version = crd["spec"]["versions"][0]
    assert version["name"] == "v1alpha1" and version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns == ["Ready", "Prefill", "Decode", "Endpoint", "Age"]
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    engine = spec["properties"]["engine"]["properties"]
    assert engine["scheduling"]["properties"]["policy"]["enum"] == ["chunked", "layered"]
    assert engine["kvTransfer"]["properties"]["backend"]["enum"] == ["redis", "nixl", "local"]
    limits = spec["properties"]["prefill"]["properties"]["resources"]["properties"]["limits"]
    assert limits["additionalProperties"] == {"x-kubernetes-int-or-string": True}
    affinity = spec["properties"]["decode"]["properties"]["affinity"]
    assert affinity["x-kubernetes-preserve-unknown-fields"] is True
    assert spec["required"] == ["model"]
    assert "description" in spec["properties"]["model"]["properties"]["source"]
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]
    assert "phase" not in status["properties"]
    assert status["properties"]["pools"]["x-kubernetes-list-map-keys"] == ["name"]
    assert _committed("lamina.dev_autoscalingpolicies.yaml")["spec"]["names"]["shortNames"] == [
        "asp"
    ]


def _validate(schema: dict, obj: dict) -> None:
    # OpenAPI's `nullable` is not JSON Schema: let null through where it is declared.
    converted = _nullable_as_json_schema(schema)
    jsonschema.Draft7Validator(converted).validate(obj)
    # The API server does not refuse a field its structural schema lacks: it drops it.
    assert _pruned(schema, obj) == [], "fields the API server would silently drop"


def _pruned(schema: dict, obj, path: str = "") -> list[str]:
    """Paths in `obj` a structural schema does not declare (the API server prunes them)."""
    if schema.get("x-kubernetes-preserve-unknown-fields") or obj is None:
        return []
    if isinstance(obj, list):
        items = schema.get("items", {})
        return [p for i, v in enumerate(obj) for p in _pruned(items, v, f"{path}[{i}]")]
    if not isinstance(obj, dict):
        return []
    props, extra = schema.get("properties", {}), schema.get("additionalProperties")
    out = []
    for key, value in obj.items():
        where = f"{path}.{key}"
        if key in props:
            if not (path == "" and key == "metadata"):  # ObjectMeta has its own schema
                out += _pruned(props[key], value, where)
        elif isinstance(extra, dict):
            out += _pruned(extra, value, where)
        elif extra is not True:
            out.append(where)
    return out


def test_pruning_check_finds_undeclared_fields():
    schema = _schema("lamina.dev_servingdeployments.yaml")["properties"]["status"]
    status = {"endpoint": "x", "conditoins": [], "pools": [{"name": "decode", "readyy": 1}]}
    assert _pruned(schema, status) == [".conditoins", ".pools[0].readyy"]


def _nullable_as_json_schema(node):
    if isinstance(node, dict):
        out = {k: _nullable_as_json_schema(v) for k, v in node.items() if k != "nullable"}
        if node.get("nullable") and "type" in node:
            out["type"] = [node["type"], "null"]
        return out
    if isinstance(node, list):
        return [_nullable_as_json_schema(v) for v in node]
    return node


def _cr(kind: str, spec: dict) -> dict:
    return {
        "apiVersion": "lamina.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": "x"},
        "spec": spec,
    }


def test_examples_validate_against_schema(gpu_spec, minimal_spec):
    schema = _schema("lamina.dev_servingdeployments.yaml")
    jsonschema.Draft7Validator.check_schema(_nullable_as_json_schema(schema))
    _validate(schema, _cr("ServingDeployment", gpu_spec))
    _validate(schema, _cr("ServingDeployment", minimal_spec))
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {}}}
    _validate(schema, _cr("ServingDeployment", dict(minimal_spec, decode={"affinity": affinity})))
    policy = {"ttft": {"targetMilliseconds": 300}, "prefill": {"minReplicas": 1, "maxReplicas": 4}}
    _validate(_schema("lamina.dev_autoscalingpolicies.yaml"), _cr("AutoscalingPolicy", policy))


@pytest.mark.parametrize(
    "path, value",
    [
        (("engine", "scheduling", "policy"), "fcfs"),
        (("prefill", "replicas"), -1),
        (("prefill", "replicas"), 1.5),  # no floats in spec
        (("engine", "speed", "prefillLayersPercent"), 150),
        (("engine", "kvTransfer", "backend"), "tcp"),
        (("model", "source"), "ftp://model"),
    ],
)
def test_schema_rejects_bad_values(gpu_spec, path, value):
    spec = copy.deepcopy(gpu_spec)
    node = spec
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(jsonschema.ValidationError):
        _validate(_schema("lamina.dev_servingdeployments.yaml"), _cr("ServingDeployment", spec))


@pytest.mark.parametrize("name", sorted(render_all()))
def test_crd_documents_are_valid_kubernetes_objects(name):
    kubernetes_validate.validate(_committed(name), "1.25", strict=True)
