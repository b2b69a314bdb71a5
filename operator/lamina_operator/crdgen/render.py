"""CustomResourceDefinition documents for the lamina.dev API, rendered from the pydantic models.

`render_all()` returns {file name: CRD dict}; `lamina-operator crds` writes them as YAML into
crds/ (one file per CRD), and a test fails when the committed files drift from the models.
kopf's peering CRDs (leader election) are rendered too, so the chart can install them.
"""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import BaseModel

from ..api import (
    AutoscalingPolicySpec,
    AutoscalingPolicyStatus,
    ServingDeploymentSpec,
    ServingDeploymentStatus,
)
from ..constants import GROUP, POLICY_KIND, POLICY_PLURAL, SERVING_KIND, SERVING_PLURAL, VERSION
from .structural import check_structural, to_structural

_LABELS = {"app.kubernetes.io/name": "lamina", "app.kubernetes.io/part-of": "lamina"}

SERVING_COLUMNS = [
    {"name": "Ready", "type": "string",
     "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
     "description": "Whether router, decode and prefill pools each have a ready pod."},
    {"name": "Prefill", "type": "integer",
     "jsonPath": '.status.pools[?(@.name=="prefill")].readyReplicas',
     "description": "Ready prefill pods."},
    {"name": "Decode", "type": "integer",
     "jsonPath": '.status.pools[?(@.name=="decode")].readyReplicas',
     "description": "Ready decode pods."},
    {"name": "Endpoint", "type": "string", "jsonPath": ".status.endpoint",
     "description": "The router's in-cluster URL."},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]  # fmt: skip
POLICY_COLUMNS = [
    {"name": "Ready", "type": "string",
     "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
     "description": "Whether the operator accepts the policy."},
    {"name": "TTFT-ms", "type": "integer", "jsonPath": ".spec.ttft.targetMilliseconds",
     "description": "Time-to-first-token target."},
    {"name": "TBT-ms", "type": "integer", "jsonPath": ".spec.tbt.targetMilliseconds",
     "description": "Time-between-tokens target."},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]  # fmt: skip


def _schema_of(model: type[BaseModel]) -> dict[str, Any]:
    return to_structural(model.model_json_schema(by_alias=True, mode="validation"))


def _root_schema(description: str, spec: type[BaseModel], status: type[BaseModel]) -> dict:
    spec_schema, status_schema = _schema_of(spec), _schema_of(status)
    root = {
        "type": "object",
        "description": description,
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": "lamina.dev/v1alpha1"},
            "kind": {"type": "string", "description": "The kind of this object."},
            "metadata": {"type": "object"},
            "spec": spec_schema,
            "status": status_schema,
        },
    }
    problems = check_structural(root)
    if problems:  # a model change that breaks the CRD must fail loudly at generation time
        raise ValueError("generated CRD schema is not structural:\n" + "\n".join(problems))
    return root


def _crd(
    kind: str,
    plural: str,
    short: list[str],
    root: dict[str, Any],
    columns: list[dict[str, Any]],
) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}", "labels": dict(_LABELS)},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": short,
                "categories": ["lamina"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {"openAPIV3Schema": root},
                }
            ],
        },
    }


def serving_deployment_crd() -> dict[str, Any]:
    root = _root_schema(
        "A model served by prefill, decode and router pools; the operator creates and "
        "sizes the pools and reports their state.",
        ServingDeploymentSpec,
        ServingDeploymentStatus,
    )
    return _crd(SERVING_KIND, SERVING_PLURAL, ["sd"], root, SERVING_COLUMNS)


def autoscaling_policy_crd() -> dict[str, Any]:
    root = _root_schema(
        "A reusable SLO autoscaling policy for the prefill and decode pools.",
        AutoscalingPolicySpec,
        AutoscalingPolicyStatus,
    )
    return _crd(POLICY_KIND, POLICY_PLURAL, ["asp"], root, POLICY_COLUMNS)


def _kopf_peering_crd(kind: str, plural: str, scope: str) -> dict[str, Any]:
    """kopf's own peering resource (kopf.dev/v1): operators with the same peering name elect one
    active instance through it. Its content is kopf's business, hence preserve-unknown-fields."""
    free = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.kopf.dev", "labels": dict(_LABELS)},
        "spec": {
            "group": "kopf.dev",
            "scope": scope,
            "names": {"kind": kind, "plural": plural, "singular": kind.lower()},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {"spec": free, "status": free},
                            "x-kubernetes-preserve-unknown-fields": True,
                        }
                    },
                }
            ],
        },
    }


def render_all() -> dict[str, dict[str, Any]]:
    """File name -> CRD, in a stable order."""
    return {
        f"{GROUP}_{SERVING_PLURAL}.yaml": serving_deployment_crd(),
        f"{GROUP}_{POLICY_PLURAL}.yaml": autoscaling_policy_crd(),
        "kopf.dev_clusterkopfpeerings.yaml": _kopf_peering_crd(
            "ClusterKopfPeering", "clusterkopfpeerings", "Cluster"
        ),
        "kopf.dev_kopfpeerings.yaml": _kopf_peering_crd(
            "KopfPeering", "kopfpeerings", "Namespaced"
        ),
    }


class _PlainDumper(yaml.SafeDumper):
    """Never writes &anchors/*aliases for a dict used twice: some GitOps tools and
    schema linters reject or mangle them in a CRD."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def to_yaml(crd: dict[str, Any]) -> str:
    """Stable YAML (insertion order, wide lines) with a generated-file header."""
    header = "# Generated by `lamina-operator crds` from lamina_operator.api; do not edit.\n"
    body = yaml.dump(crd, Dumper=_PlainDumper, sort_keys=False, width=100, allow_unicode=True)
    return header + body
