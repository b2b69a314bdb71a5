"""values.yaml is documented and agrees with values.schema.json."""

from __future__ import annotations

import json

import jsonschema
import yaml
from chart_helpers import CHART, CI_VALUES

VALUES = CHART / "values.yaml"
SCHEMA = json.loads((CHART / "values.schema.json").read_text())


def deep_merge(base: dict, override: dict) -> dict:
    """Helm's merge of a values file over the defaults: maps merge, everything else replaces."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def test_defaults_and_ci_scenarios_satisfy_the_schema():
    jsonschema.Draft7Validator.check_schema(SCHEMA)
    defaults = yaml.safe_load(VALUES.read_text())
    jsonschema.validate(defaults, SCHEMA)
    for path in CI_VALUES:
        merged = deep_merge(defaults, yaml.safe_load(path.read_text()) or {})
        jsonschema.validate(merged, SCHEMA)


def test_every_value_has_a_comment_above_it():
    """A key is documented by the comment block right above it, or (for a key inside a map or
    list of an already-documented value) by its parent's comment."""
    lines = VALUES.read_text().splitlines()
    undocumented = []
    documented_indent = None  # indent of the nearest documented ancestor
    for i, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or stripped.startswith("- "):
            continue
        indent = len(line) - len(line.lstrip())
        if documented_indent is not None and indent > documented_indent:
            continue  # inside a documented value (e.g. resources.requests.cpu)
        documented_indent = None
        has_comment = i > 0 and lines[i - 1].strip().startswith("#")
        is_section = stripped.endswith(":")  # a map of documented keys, e.g. `image:`
        if has_comment:
            documented_indent = indent
        elif not is_section:
            undocumented.append(stripped)
    assert not undocumented, f"values without a comment: {undocumented}"


def test_schema_knows_every_top_level_value():
    defaults = yaml.safe_load(VALUES.read_text())
    assert set(defaults) == set(SCHEMA["properties"])
    assert SCHEMA["additionalProperties"] is False
