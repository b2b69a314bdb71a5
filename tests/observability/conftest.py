"""Fixtures for the observability tests: helm (as the chart tests get it), the dashboards."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# pytest runs with --import-mode=importlib: make the chart helpers and this folder importable.
sys.path.insert(0, str(ROOT / "tests" / "chart"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT / "scripts"))  # monitoring_stack

from chart_helpers import find_helm  # noqa: E402


@pytest.fixture(scope="session")
def helm() -> str:
    return find_helm()


@pytest.fixture(scope="session")
def dashboards() -> dict[str, dict]:
    folder = ROOT / "manifests" / "dashboards"
    return {p.name: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}
