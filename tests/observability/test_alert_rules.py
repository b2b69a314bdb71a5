"""The alert rules: promtool accepts them, each alert fires on its synthetic series and stays
quiet on the near miss (rules_test.yaml), and each says what happened, why, and where the
runbook is (docs/operations.md)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
RULES = ROOT / "manifests" / "alerts" / "lamina-rules.yaml"
CHART_RULES = ROOT / "charts" / "lamina" / "alerts" / "lamina-rules.yaml"
DOCS = ROOT / "docs" / "operations.md"


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is missing: apt-get install -y prometheus (make install does it)")
    return path


def _alerts() -> list[dict]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [r for g in groups for r in g["rules"] if "alert" in r]


def test_promtool_checks_the_rules():
    out = subprocess.run([_promtool(), "check", "rules", str(RULES)], capture_output=True,
                         text=True)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_the_chart_ships_the_same_rules():
    assert CHART_RULES.read_text() == RULES.read_text(), "run `python scripts/dashboards.py`"


def test_each_alert_fires_and_stays_quiet(tmp_path):
    # Annotations are compared verbatim by promtool; these cases test when alerts fire, so
    # they run against the rules without annotations (rules_annotations_test.yaml covers those).
    doc = yaml.safe_load(RULES.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "lamina-rules.yaml").write_text(yaml.safe_dump(doc))
    shutil.copy(HERE / "rules_test.yaml", tmp_path / "rules_test.yaml")
    out = subprocess.run([_promtool(), "test", "rules", str(tmp_path / "rules_test.yaml")],
                         capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr


def test_annotations_render():
    out = subprocess.run([_promtool(), "test", "rules", str(HERE / "rules_annotations_test.yaml")],
                         capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_alert_has_a_firing_and_a_quiet_case():
    cases = yaml.safe_load((HERE / "rules_test.yaml").read_text())["tests"]
    fired, quiet = set(), set()
    for case in cases:
        for check in case["alert_rule_test"]:
            (fired if check["exp_alerts"] else quiet).add(check["alertname"])
    names = {a["alert"] for a in _alerts()}
    assert names - fired == set(), "alerts never shown to fire"
    assert names - quiet == set(), "alerts never shown to stay quiet"


def test_every_alert_explains_itself_and_links_its_runbook():
    headings = {
        re.sub(r"[^a-z0-9 -]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        for line in DOCS.read_text().splitlines()
        if line.startswith("#")
    }
    for alert in _alerts():
        notes = alert["annotations"]
        assert {"summary", "description", "runbook_url"} <= notes.keys(), alert["alert"]
        assert "Likely cause" in notes["description"], alert["alert"]
        anchor = notes["runbook_url"].split("#", 1)[1]
        assert notes["runbook_url"].split("#")[0].endswith("docs/operations.md")
        assert anchor in headings, f"{alert['alert']}: no section #{anchor} in docs/operations.md"
