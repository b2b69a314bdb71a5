"""`lamina-operator bench autoscale`: every trace through every controller, tables and plots.

Writes results.json (every score and the per-evaluation timelines) and prints a Markdown
table; with --plots, one PNG per trace (replicas, TTFT p90 and TBT p90 over time, decide
against the tuned HPA). matplotlib is imported only then (it is a dev dependency).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import yaml

from ...api import AutoscalingPolicySpec
from .profile import ServiceProfile
from .run import DecideController, HpaController, Result, StaticController, run_trace
from .traces import TRACES

CONTROLLERS = ("decide", "hpa", "hpa-tuned", "hpa-recipe")

# The policy the simulation runs when none is given: SLOs for the demo model's profile.
DEFAULT_POLICY = {
    "ttft": {"percentile": 90, "targetMilliseconds": 500},
    "tbt": {"percentile": 90, "targetMilliseconds": 50},
    "prefill": {"minReplicas": 1, "maxReplicas": 16},
    "decode": {"minReplicas": 1, "maxReplicas": 16},
}


def load_policy(path: Path | None) -> AutoscalingPolicySpec:
    if path is None:
        return AutoscalingPolicySpec.model_validate(DEFAULT_POLICY)
    doc = yaml.safe_load(path.read_text())
    return AutoscalingPolicySpec.model_validate(doc.get("spec", doc))


def controller(name: str, policy: AutoscalingPolicySpec, profile: ServiceProfile):
    if name == "decide":
        return DecideController(policy)
    if name in CONTROLLERS:
        return HpaController(policy, profile, name)
    parts = name.split(":")
    if parts[0] == "static" and len(parts) == 3 and all(p.isdigit() for p in parts[1:]):
        return StaticController(int(parts[1]), int(parts[2]))
    raise ValueError(
        f"unknown controller {name!r}; pick from {', '.join(CONTROLLERS)} or static:P:D"
    )


def table(results: list[Result]) -> str:
    head = (
        "| trace | controller | SLO attained (TTFT and TBT) | TTFT attained | TBT attained | "
        "TTFT p90 (s) | TBT p90 (ms) | GPU-hours | scaling actions |\n"
        "|---|---|---|---|---|---|---|---|---|\n"
    )
    rows = [
        f"| {r.trace} | {r.controller} | {100 * r.both_attained:.1f}% | "
        f"{100 * r.ttft_attained:.1f}% | {100 * r.tbt_attained:.1f}% | {r.ttft_p90:.2f} | "
        f"{1000 * r.tbt_p90:.1f} | {r.gpu_hours:.2f} | {r.actions} |"
        for r in results
    ]
    return head + "\n".join(rows) + "\n"


def plot(trace: str, results: list[Result], policy: AutoscalingPolicySpec, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(10, 8), sharex=True)
    styles = {"decide": "-", "hpa-tuned": "--", "hpa": ":"}
    for r in results:
        if r.controller not in styles:
            continue
        t = [row[0] / 60 for row in r.timeline]
        ls = styles[r.controller]
        axes[0].step(t, [row[1] for row in r.timeline], ls, color="tab:blue", where="post",
                     label=f"prefill, {r.controller}")  # fmt: skip
        axes[0].step(t, [row[2] for row in r.timeline], ls, color="tab:orange", where="post",
                     label=f"decode, {r.controller}")  # fmt: skip
        axes[1].plot(t, [row[3] for row in r.timeline], ls, label=r.controller)
        axes[2].plot(t, [1000 * row[4] for row in r.timeline], ls, label=r.controller)
    if policy.ttft:
        axes[1].axhline(policy.ttft.target_milliseconds / 1000, color="red", lw=0.8)
    if policy.tbt:
        axes[2].axhline(policy.tbt.target_milliseconds, color="red", lw=0.8)
    axes[0].set_ylabel("replicas")
    axes[1].set_ylabel("TTFT p90 (s)")
    axes[1].set_yscale("log")
    axes[2].set_ylabel("TBT p90 (ms)")
    axes[2].set_xlabel("minutes")
    axes[0].legend(fontsize=7, ncol=3)
    axes[1].legend(fontsize=7)
    axes[0].set_title(f"{trace}: {TRACES[trace].description} (red: SLO target)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def bench(
    traces: list[str],
    controllers: list[str],
    out: Path | None,
    plots: Path | None,
    policy_path: Path | None,
    seed: int,
) -> list[Result]:
    policy, profile = load_policy(policy_path), ServiceProfile()
    unknown = [t for t in traces if t not in TRACES]
    if unknown:
        raise ValueError(f"unknown trace(s) {unknown}; pick from {', '.join(TRACES)}")
    results: list[Result] = []
    for name in traces:
        per_trace = []
        for c in controllers:
            result = run_trace(TRACES[name], controller(c, policy, profile), profile, policy,
                               seed=seed)  # fmt: skip
            per_trace.append(result)
            print(table([result]).splitlines()[-1], flush=True)
        results += per_trace
        if plots is not None:
            plots.mkdir(parents=True, exist_ok=True)
            plot(name, per_trace, policy, plots / f"autoscale-{name}.png")
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        doc = {
            "policy": policy.model_dump(by_alias=True),
            "profile": asdict(profile),
            "seed": seed,
            "results": [asdict(r) for r in results],
        }
        (out / "results.json").write_text(json.dumps(doc, indent=1))
        (out / "table.md").write_text(table(results))
    return results
