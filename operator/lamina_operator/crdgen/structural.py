"""Pydantic JSON Schema -> Kubernetes structural schema (apiextensions.k8s.io/v1, Kubernetes 1.20+).

Structural means: every node states its `type` (or is int-or-string / preserve-unknown-fields),
no `$ref`, no `anyOf`/`oneOf` that mix types, no `additionalProperties: false`, and no keyword
OpenAPI v3.0 lacks (`const`, numeric `exclusiveMinimum`, `$defs`). `check_structural` is the
independent checker the tests run on the committed CRDs.
"""

from __future__ import annotations

import copy
from typing import Any

# Keys pydantic emits that a CRD schema must not carry (or that only add noise to it).
_DROPPED = {"title", "$defs", "discriminator", "examples"}
_INT_OR_STRING = {"integer", "string"}
# What JSONSchemaProps accepts in Kubernetes 1.20 (CEL's x-kubernetes-validations came in 1.23).
_ALLOWED_KEYS = {
    "type", "format", "description", "default", "enum", "nullable", "maximum", "minimum",
    "maxLength", "minLength", "pattern", "maxItems", "minItems", "maxProperties",
    "minProperties", "required", "items", "properties", "additionalProperties",
    "x-kubernetes-int-or-string", "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-list-type", "x-kubernetes-list-map-keys", "x-kubernetes-map-type",
    "x-kubernetes-embedded-resource",
}  # fmt: skip


class SchemaError(ValueError):
    """The model's schema cannot be expressed as a structural CRD schema."""


def to_structural(schema: dict[str, Any]) -> dict[str, Any]:
    """Inline `$ref`s and rewrite pydantic idioms (Optional, Union[int, str], Any) into CRD form."""
    defs = schema.get("$defs", {})
    return _convert(schema, defs, path="")


def _resolve(node: dict[str, Any], defs: dict[str, Any], path: str) -> dict[str, Any]:
    """Replace a `$ref` (or a one-element allOf) by the referenced schema, siblings winning."""
    node = dict(node)
    if "allOf" in node and len(node["allOf"]) == 1:
        node = {**node.pop("allOf")[0], **node}
    ref = node.pop("$ref", None)
    if ref is None:
        return node
    name = ref.rsplit("/", 1)[-1]
    if name not in defs:
        raise SchemaError(f"{path or '<root>'}: unresolvable $ref {ref}")
    return {**copy.deepcopy(defs[name]), **node}


def _convert(node: dict[str, Any], defs: dict[str, Any], path: str) -> dict[str, Any]:
    node = _resolve(node, defs, path)
    out: dict[str, Any] = {}
    if "anyOf" in node:
        variants = [_resolve(v, defs, path) for v in node.pop("anyOf")]
        non_null = [v for v in variants if v.get("type") != "null"]
        nullable = len(non_null) < len(variants)
        types = {v.get("type") for v in non_null}
        if len(non_null) == 1:
            node = {**non_null[0], **node}
        elif types == _INT_OR_STRING and len(non_null) == 2:
            out["x-kubernetes-int-or-string"] = True
        else:
            raise SchemaError(
                f"{path or '<root>'}: union of {sorted(map(str, types))} is not "
                "structural; use one type (or int-or-string)"
            )
        if nullable:
            out["nullable"] = True
            if node.get("default", 0) is None:
                node.pop("default")
    for key, value in node.items():
        if key in _DROPPED:
            continue
        if key == "default" and value == "":
            continue  # kube-apiserver 1.20 reads `default: ""` as null and rejects the CRD
        if key == "const":
            out["enum"] = [value]
        elif key == "properties":
            out["properties"] = {
                name: _convert(sub, defs, f"{path}.{name}") for name, sub in value.items()
            }
        elif key == "items":
            out["items"] = _convert(value, defs, f"{path}[]")
        elif key == "additionalProperties":
            if value is True or value == {}:
                out["x-kubernetes-preserve-unknown-fields"] = True
            elif isinstance(value, dict):
                out["additionalProperties"] = _convert(value, defs, f"{path}.*")
            # False (pydantic extra="forbid") is dropped: the apiserver prunes unknown fields.
        elif key in ("exclusiveMinimum", "exclusiveMaximum"):
            raise SchemaError(f"{path}: use ge/le, not gt/lt (OpenAPI v3.0 booleans differ)")
        else:
            out[key] = value
    if out.get("x-kubernetes-preserve-unknown-fields"):
        out.setdefault("type", "object")
        out.pop("additionalProperties", None)
    if "x-kubernetes-int-or-string" in out:
        out.pop("type", None)
    if out.get("type") == "object" and "properties" in out and out.get("required") == []:
        out.pop("required")
    # Readers of the YAML look for type and description first.
    head = {key: out.pop(key) for key in ("type", "description") if key in out}
    return {**head, **out}


def check_structural(schema: dict[str, Any], path: str = "") -> list[str]:
    """Return the problems that make `schema` non-structural or invalid on Kubernetes 1.20."""
    problems: list[str] = []
    where = path or "<root>"
    for key in schema:
        if key not in _ALLOWED_KEYS:
            problems.append(f"{where}: keyword {key!r} is not allowed in a 1.20 CRD schema")
    int_or_string = schema.get("x-kubernetes-int-or-string") is True
    preserve = schema.get("x-kubernetes-preserve-unknown-fields") is True
    node_type = schema.get("type")
    if int_or_string and node_type is not None:
        problems.append(f"{where}: int-or-string nodes must not set type")
    if not int_or_string and node_type is None:
        problems.append(f"{where}: missing type")
    if node_type is not None and node_type not in (
        "object",
        "array",
        "string",
        "integer",
        "number",
        "boolean",
    ):
        problems.append(f"{where}: unknown type {node_type!r}")
    if schema.get("additionalProperties") is False:
        problems.append(f"{where}: additionalProperties: false is not allowed")
    if "properties" in schema and "additionalProperties" in schema:
        problems.append(f"{where}: properties and additionalProperties are mutually exclusive")
    if node_type == "object" and not ({"properties", "additionalProperties"} & set(schema)):
        if not preserve and path != ".metadata":  # root metadata is validated by the apiserver
            problems.append(f"{where}: object without properties needs preserve-unknown-fields")
    if node_type == "array":
        if "items" not in schema:
            problems.append(f"{where}: array without items")
        if schema.get("x-kubernetes-list-type") == "map":
            keys = schema.get("x-kubernetes-list-map-keys") or []
            required = set(schema.get("items", {}).get("required", []))
            for key in keys:
                if key not in required:
                    problems.append(f"{where}: list-map key {key!r} must be required in items")
    for name in schema.get("required", []):
        if name not in schema.get("properties", {}):
            problems.append(f"{where}: required field {name!r} is not a property")
    if schema.get("default") == "":
        problems.append(f"{where}: default '' is rejected by kube-apiserver 1.20 (read as null)")
    if "enum" in schema and "default" in schema and schema["default"] not in schema["enum"]:
        problems.append(f"{where}: default {schema['default']!r} is not in enum")
    for name, sub in schema.get("properties", {}).items():
        problems.extend(check_structural(sub, f"{path}.{name}"))
    if isinstance(schema.get("items"), dict):
        problems.extend(check_structural(schema["items"], f"{path}[]"))
    if isinstance(schema.get("additionalProperties"), dict):
        problems.extend(check_structural(schema["additionalProperties"], f"{path}.*"))
    return problems
