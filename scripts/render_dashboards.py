"""Draw the dashboards from real Prometheus data into PNGs (docs/img/), one image per row.

    python scripts/render_dashboards.py [--seconds 20] [--out docs/img]

Starts scripts/monitoring_stack.py (Prometheus scraping `lamina up` and the operator endpoint),
runs a load, evaluates every panel's query over the run through Prometheus' HTTP API with the
dashboard's variables substituted, and plots the series as Grafana would lay them out (time
series as lines, stats as a number). No Grafana server exists here; the data are real.
Not part of the serving path.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests" / "observability"))
from dashboard_queries import substitute, variable_values  # noqa: E402
from monitoring_stack import DEPLOYMENT, NAMESPACE, MonitoringStack  # noqa: E402

ROOT = HERE.parent
SCALE = {"percentunit": (100.0, "%"), "s": (1000.0, "ms"), "Bps": (1 / 1024, "KiB/s"),
         "bytes": (1 / 1024, "KiB"), "reqps": (1.0, "req/s"), "ops": (1.0, "ops/s")}  # fmt: skip


def rows(board: dict) -> list[tuple[str, list[dict]]]:
    out: list[tuple[str, list[dict]]] = []
    for p in board["panels"]:
        if p["type"] == "row":
            out.append((p["title"], list(p.get("panels", []))))
        elif out:
            out[-1][1].append(p)
    return out


def legend(fmt: str, labels: dict) -> str:
    if fmt in ("", "__auto"):
        return ",".join(f"{k}={v}" for k, v in labels.items()) or "value"
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt)


def draw_panel(ax, panel: dict, stack: MonitoringStack, values: dict, t0: float, t1: float):
    factor, unit = SCALE.get(panel["fieldConfig"]["defaults"].get("unit", ""), (1.0, ""))
    ax.set_title(panel["title"], fontsize=9, loc="left")
    drawn = 0
    for target in panel["targets"]:
        expr = substitute(target["expr"], values)
        if panel["type"] == "stat":
            for r in stack.query(expr, at=t1)["result"]:
                v = float(r["value"][1]) * factor
                ax.text(0.5, 0.5, f"{v:.3g} {unit}", ha="center", va="center", fontsize=22)
                drawn += 1
            ax.axis("off")
            continue
        for r in stack.query_range(expr, t0, t1)["result"]:
            ts = [float(t) - t0 for t, _ in r["values"]]
            vs = [float(v) * factor for _, v in r["values"]]
            ax.plot(ts, vs, label=legend(target.get("legendFormat", ""), r["metric"]), lw=1.2)
            drawn += 1
    if panel["type"] != "stat":
        ax.set_xlabel("seconds", fontsize=7)
        ax.set_ylabel(unit, fontsize=7)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if any(not line.get_label().startswith("_") for line in ax.get_lines()):
            ax.legend(fontsize=6, loc="upper left")
    if not drawn:
        ax.text(0.5, 0.5, "no data here\n(needs a cluster)", ha="center", va="center",
                fontsize=9, color="gray", transform=ax.transAxes)  # fmt: skip


def render(stack: MonitoringStack, out: Path, t0: float, t1: float) -> list[Path]:
    written = []
    for path in sorted((ROOT / "manifests" / "dashboards").glob("*.json")):
        board = json.loads(path.read_text())
        values = variable_values(board, NAMESPACE, DEPLOYMENT)
        for title, panels in rows(board):
            cols = 3
            n_rows = -(-len(panels) // cols)
            fig, axes = plt.subplots(n_rows, cols, figsize=(15, 3.4 * n_rows), squeeze=False)
            for ax, panel in zip(axes.flat, panels):
                draw_panel(ax, panel, stack, values, t0, t1)
            for ax in list(axes.flat)[len(panels) :]:
                ax.axis("off")
            fig.suptitle(f"{board['title']} — {title}", fontsize=12, x=0.01, ha="left")
            fig.tight_layout()
            slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")
            target = out / f"{board['uid']}-{slug}.png"
            fig.savefig(target, dpi=80)
            plt.close(fig)
            written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="load duration")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, MonitoringStack(Path(tmp)) as stack:
        t0 = time.time()
        sent = stack.load(seconds=args.seconds)
        stack.wait_for_scrapes()
        for path in render(stack, args.out, t0, time.time()):
            print(f"wrote {path.relative_to(ROOT)}")
        print(f"{sent} requests")
    return 0


if __name__ == "__main__":
    sys.exit(main())
