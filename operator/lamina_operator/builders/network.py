"""Services and PodDisruptionBudgets of the pools.

- `<name>-router`: the endpoint (ClusterIP by default), port 8000 named http.
- `<name>-prefill`, `<name>-decode`: headless, so the router resolves every ready pod's IP; it
  calls them on the internal port 8001 (its --prefill-service/--decode-service name
  `<service>:8001`), which these Services list first; 8000 (http) stays listed for port-forwards.
- PDBs allow one voluntary disruption at a time per pool (replica-independent, so scaling a
  pool never rewrites its PDB). policy/v1 where served, policy/v1beta1 on Kubernetes < 1.21.
"""

from __future__ import annotations

from typing import Any

from ..api import ServingDeploymentSpec
from ..constants import ENGINE_PORT, INTERNAL_PORT
from .names import Owner, child_name, metadata, selector_labels


def build_service(owner: Owner, spec: ServingDeploymentSpec, role: str) -> dict[str, Any]:
    http = {"name": "http", "port": ENGINE_PORT, "targetPort": "http", "protocol": "TCP"}
    service_spec: dict[str, Any] = {"selector": selector_labels(owner, role), "ports": [http]}
    if role == "router":
        service_spec["type"] = spec.router.service_type
    else:
        internal = {
            "name": "internal",
            "port": INTERNAL_PORT,
            "targetPort": "internal",
            "protocol": "TCP",
        }
        service_spec["ports"] = [internal, http]
        service_spec["clusterIP"] = "None"
        service_spec["publishNotReadyAddresses"] = False
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(owner, child_name(owner, role), role, role),
        "spec": service_spec,
    }


def build_pdb(owner: Owner, role: str, api_version: str = "policy/v1") -> dict[str, Any]:
    return {
        "apiVersion": api_version,
        "kind": "PodDisruptionBudget",
        "metadata": metadata(owner, child_name(owner, role), role, role),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector_labels(owner, role)}},
    }
