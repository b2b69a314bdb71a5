"""Build the Grafana dashboards as JSON with grafana-foundation-sdk.

The panels are listed in scripts/dashboard_serving.py and scripts/dashboard_autoscaling.py.

    python scripts/dashboards.py            # write manifests/dashboards/ and the chart's copy
    python scripts/dashboards.py --check    # exit 1 if a committed file differs (CI drift test)

The chart cannot read files outside itself, so charts/lamina/dashboards/ and
charts/lamina/alerts/ hold copies of manifests/dashboards/ and manifests/alerts/; this script
writes both and --check compares both. Not part of the serving path.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from grafana_foundation_sdk.builders import dashboard as gd
from grafana_foundation_sdk.builders import prometheus, stat, timeseries
from grafana_foundation_sdk.builders.common import ReduceDataOptions, VizLegendOptions
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import LegendDisplayMode, LegendPlacement
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DataSourceRef,
    VariableOption,
    VariableRefresh,
    VariableSort,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dashboard_autoscaling import AUTOSCALING  # noqa: E402
from dashboard_panels import Panel, Row  # noqa: E402
from dashboard_serving import SERVING  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT_DIRS = (ROOT / "manifests" / "dashboards", ROOT / "charts" / "lamina" / "dashboards")
RULES = ROOT / "manifests" / "alerts" / "lamina-rules.yaml"
CHART_RULES = ROOT / "charts" / "lamina" / "alerts" / "lamina-rules.yaml"
# Never a datasource uid: the ${datasource} variable picks one in each Grafana.
DS = DataSourceRef(type_val="prometheus", uid="${datasource}")
# (file, uid, title, rows, the metric whose labels fill the namespace/deployment pickers)
DASHBOARDS = (
    ("lamina-serving.json", "lamina-serving", "Lamina / Serving", SERVING,
     "lamina_requests_total"),
    ("lamina-autoscaling.json", "lamina-autoscaling", "Lamina / Autoscaling and operator",
     AUTOSCALING, "lamina_autoscaler_desired_replicas"),
)  # fmt: skip


def _variables(board: gd.Dashboard, metric: str, slo: bool) -> None:
    board.with_variable(gd.DatasourceVariable("datasource").label("Data source").type("prometheus"))
    board.with_variable(
        gd.QueryVariable("namespace").label("Namespace").datasource(DS)
        .query(f"label_values({metric}, namespace)")
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED).sort(VariableSort.ALPHABETICAL_ASC)
    )  # fmt: skip
    board.with_variable(
        gd.QueryVariable("deployment").label("ServingDeployment").datasource(DS)
        .query(f'label_values({metric}{{namespace="$namespace"}}, deployment)')
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED).sort(VariableSort.ALPHABETICAL_ASC)
    )  # fmt: skip
    if slo:  # the AutoscalingPolicy's targets; set them to match (seconds)
        for name, label, value in (("ttft_slo", "TTFT SLO (s)", "1"),
                                   ("tbt_slo", "TBT SLO (s)", "0.1")):  # fmt: skip
            board.with_variable(
                gd.TextBoxVariable(name).label(label).default_value(value)
                .current(VariableOption(text=value, value=value, selected=True))
            )  # fmt: skip


def _panel(p: Panel):
    builder = (stat.Panel() if p.kind == "stat" else timeseries.Panel()).title(p.title)
    builder = builder.datasource(DS).unit(p.unit).span(p.span).height(8)
    if p.description:
        builder = builder.description(p.description)
    if p.kind == "stat":
        builder = builder.reduce_options(ReduceDataOptions().calcs(["lastNotNull"]))
    else:
        builder = builder.legend(
            VizLegendOptions().show_legend(True).display_mode(LegendDisplayMode.LIST)
            .placement(LegendPlacement.BOTTOM)
        )  # fmt: skip
    for i, t in enumerate(p.targets):
        q = prometheus.Dataquery().expr(t.expr).legend_format(t.legend or "__auto")
        builder = builder.with_target(q.ref_id(chr(ord("A") + i)).datasource(DS))
    return builder


def build(uid: str, title: str, rows: list[Row], metric: str) -> dict:
    board = (
        gd.Dashboard(title).uid(uid).tags(["lamina"]).editable().refresh("30s")
        .time("now-1h", "now").timezone("browser").tooltip(DashboardCursorSync.CROSSHAIR)
    )  # fmt: skip
    _variables(board, metric, slo=rows is SERVING)
    for row in rows:
        board = board.with_row(gd.Row(row.title))
        for p in row.panels:
            board = board.with_panel(_panel(p))
    return json.loads(json.dumps(board.build(), cls=JSONEncoder))


def render() -> dict[Path, str]:
    """Every generated file -> its text (pretty JSON, sorted keys, trailing newline)."""
    files: dict[Path, str] = {}
    for name, uid, title, rows, metric in DASHBOARDS:
        text = json.dumps(build(uid, title, rows, metric), indent=2, sort_keys=True) + "\n"
        for d in OUT_DIRS:
            files[d / name] = text
    files[CHART_RULES] = RULES.read_text()
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare, write nothing")
    args = parser.parse_args(argv)
    stale = []
    for path, text in render().items():
        current = path.read_text() if path.exists() else None
        if current == text:
            continue
        if args.check:
            stale.append(path)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path.relative_to(ROOT)}")
    for path in stale:
        print(f"{path.relative_to(ROOT)} is out of date: run `python scripts/dashboards.py`")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
