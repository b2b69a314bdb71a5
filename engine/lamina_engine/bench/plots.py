"""PNG plots of a sweep: the TTFT-TBT frontier and SLO attainment vs request rate.

Each curve is one engine configuration (scheduler, chunk size, SPEED cutoff) across the swept
rates. matplotlib runs with the Agg backend (no display needed).
"""

from __future__ import annotations

from pathlib import Path

# Distinct markers and dash patterns so curves that coincide (e.g. two at 100%) stay visible.
STYLES = [("o", "-"), ("s", "--"), ("^", ":"), ("D", "-."), ("v", "-"), ("P", "--")]


def _curves(runs: list[dict]) -> dict[str, list[dict]]:
    curves: dict[str, list[dict]] = {}
    for r in runs:
        curves.setdefault(r["label"], []).append(r)
    return {k: sorted(v, key=lambda r: r["rate"]) for k, v in curves.items()}


def plot_frontier(runs: list[dict], path: Path, title: str) -> Path:
    """TTFT p50 (y) against TBT p99 (x), one point per rate, one line per configuration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2), dpi=90)
    for i, (label, pts) in enumerate(_curves(runs).items()):
        xs = [p["tbt_p99"] * 1e3 for p in pts]
        ys = [p["ttft_p50"] * 1e3 for p in pts]
        marker, dash = STYLES[i % len(STYLES)]
        ax.plot(xs, ys, marker=marker, linestyle=dash, label=label)
        for p, x, y in zip(pts, xs, ys):
            ax.annotate(
                f"{p['rate']:g}/s", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points"
            )
    ax.set_xlabel("TBT p99 (ms)")
    ax.set_ylabel("TTFT p50 (ms)")
    ax.set_yscale("log")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_attainment(runs: list[dict], path: Path, title: str) -> Path:
    """Share of requests meeting both SLOs (y, %) against the request rate (x)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2), dpi=90)
    for i, (label, pts) in enumerate(_curves(runs).items()):
        marker, dash = STYLES[i % len(STYLES)]
        rates = [p["rate"] for p in pts]
        shares = [100 * p["attainment"] for p in pts]
        ax.plot(rates, shares, marker=marker, linestyle=dash, label=label, alpha=0.85)
    ax.axhline(90, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xlabel("request rate (req/s, simulated clock)")
    ax.set_ylabel("SLO attainment (%)")
    ax.set_ylim(-3, 103)
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
