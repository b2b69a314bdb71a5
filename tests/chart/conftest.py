"""Fixtures for the chart tests: a real helm binary (no cluster needed)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# pytest runs with --import-mode=importlib: make chart_helpers importable by the test modules.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from chart_helpers import find_helm  # noqa: E402


@pytest.fixture(scope="session")
def helm() -> str:
    return find_helm()
