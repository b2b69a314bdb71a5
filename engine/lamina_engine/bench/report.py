"""One run's summary (JSON-ready) and the side-by-side table a sweep prints."""

from __future__ import annotations

import math

from lamina_engine.bench.metrics import attainment, latency_summary
from lamina_engine.bench.replay import ReplayResult


def summarize(result: ReplayResult, *, ttft_slo: float, tbt_slo: float) -> dict:
    """Latency percentiles, throughput, SLO attainment and traffic counters of one replay."""
    steps = result.steps
    out_tokens = result.output_tokens
    prompt_tokens = sum(r.prompt_tokens for r in result.requests)
    expert_bytes = sum(s.expert_bytes for s in steps)
    token_layers = sum(s.token_layers for s in steps)
    summary = {
        "requests": len(result.requests),
        "prompt_tokens": prompt_tokens,
        "output_tokens": out_tokens,
        "steps": len(steps),
        "simulated_seconds": result.makespan,
        "wall_seconds": result.wall_seconds,
        **latency_summary(result.requests),
        "throughput_tokens_per_s": out_tokens / result.makespan if result.makespan else math.nan,
        "ttft_slo": ttft_slo,
        "tbt_slo": tbt_slo,
        "attainment": attainment(result.requests, ttft_slo, tbt_slo),
        "expert_bytes": expert_bytes,
        "expert_bytes_per_output_token": expert_bytes / out_tokens,
        "expert_bytes_per_token": expert_bytes / (out_tokens + prompt_tokens),
        "expert_loads": sum(s.expert_loads for s in steps),
        "peak_kv_bytes": max(s.kv_bytes_held for s in steps),
        "model_seconds": sum(s.model_seconds for s in steps),
        "token_layers": token_layers,
        # Prompt work in token x layers (with SPEED, prompt tokens stop at layer K).
        "prefill_token_layers": sum(s.prompt_layer_tokens for s in steps),
        "attention_pairs": sum(s.attention_pairs for s in steps),
        "preemptions": sum(s.preempted for s in steps),
        "layer_groups_run": sum(1 for s in steps if s.layer_group is not None),
    }
    return summary


COLUMNS = [
    ("label", "config", "{}"),
    ("rate", "rate", "{:g}"),
    ("ttft_p50", "TTFT p50 ms", "{:.1f}", 1e3),
    ("ttft_p99", "TTFT p99 ms", "{:.1f}", 1e3),
    ("tbt_p50", "TBT p50 ms", "{:.2f}", 1e3),
    ("tbt_p99", "TBT p99 ms", "{:.2f}", 1e3),
    ("e2e_p50", "E2E p50 s", "{:.3f}"),
    ("throughput_tokens_per_s", "out tok/s", "{:.1f}"),
    ("attainment", "SLO %", "{:.0f}", 100),
    ("expert_bytes_per_output_token", "expert MB/out tok", "{:.2f}", 1e-6),
    ("peak_kv_bytes", "peak KV MB", "{:.1f}", 1e-6),
]


def format_table(runs: list[dict]) -> str:
    """A Markdown table of the sweep, one row per run."""
    head = "| " + " | ".join(c[1] for c in COLUMNS) + " |"
    rule = "|" + "|".join("---" for _ in COLUMNS) + "|"
    rows = [head, rule]
    for r in runs:
        cells = []
        for col in COLUMNS:
            key, _, fmt = col[:3]
            v = r[key]
            if len(col) > 3:
                v = v * col[3]
            cells.append(fmt.format(v))
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def ratios(runs: list[dict], baseline: str) -> list[dict]:
    """Each run's expert bytes/token and TTFT p50 relative to `baseline` at the same rate."""
    base = {(r["workload"], r["rate"]): r for r in runs if r["label"] == baseline}
    out = []
    for r in runs:
        b = base.get((r["workload"], r["rate"]))
        if b is None or r["label"] == baseline:
            continue
        out.append(
            {
                "workload": r["workload"],
                "rate": r["rate"],
                "label": r["label"],
                "baseline": baseline,
                "expert_bytes_per_output_token": r["expert_bytes_per_output_token"]
                / b["expert_bytes_per_output_token"],
                "expert_bytes_per_token": r["expert_bytes_per_token"] / b["expert_bytes_per_token"],
                "ttft_p50": r["ttft_p50"] / b["ttft_p50"],
                "tbt_p99": r["tbt_p99"] / b["tbt_p99"],
                "peak_kv_bytes": r["peak_kv_bytes"] / b["peak_kv_bytes"],
                "prefill_token_layers": r["prefill_token_layers"] / b["prefill_token_layers"],
                "model_seconds": r["model_seconds"] / b["model_seconds"],
            }
        )
    return out
