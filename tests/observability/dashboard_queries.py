"""Read the committed dashboards: every panel's PromQL, with the dashboard's variables."""

from __future__ import annotations

import re

# Grafana's built-in interval variables, as Grafana would expand them for a short range.
BUILTINS = {"__rate_interval": "1m", "__interval": "15s", "__range": "5m"}
METRIC = re.compile(r"\b(lamina_[a-z0-9_]+|kube_[a-z0-9_]+)\b")


def panels(board: dict) -> list[dict]:
    """Every non-row panel, rows' nested panels included (collapsed rows nest them)."""
    out = []
    for p in board["panels"]:
        if p["type"] == "row":
            out += p.get("panels", [])
        else:
            out.append(p)
    return out


def queries(board: dict) -> list[tuple[str, str, str]]:
    """(panel title, panel type, expr) of every target."""
    return [(p["title"], p["type"], t["expr"]) for p in panels(board) for t in p["targets"]]


def substitute(expr: str, values: dict[str, str]) -> str:
    """Replace $var and ${var} as Grafana does; a variable with no value is an error."""

    def one(m: re.Match) -> str:
        name = m.group(1) or m.group(2)
        if name not in values:
            raise KeyError(f"no value for ${name} in {expr!r}")
        return values[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", one, expr)


def variable_values(board: dict, namespace: str, deployment: str) -> dict[str, str]:
    """namespace/deployment as given; textbox and constant variables at their defaults."""
    values = dict(BUILTINS, namespace=namespace, deployment=deployment)
    for var in board["templating"]["list"]:
        if var["type"] in ("textbox", "constant", "custom"):
            values[var["name"]] = str(var.get("current", {}).get("value", var.get("query")))
    return values


def metric_names(expr: str) -> set[str]:
    """lamina_* and kube_* names in a query, histogram suffixes stripped."""
    return {re.sub(r"_(bucket|sum|count)$", "", m) for m in METRIC.findall(expr)}
