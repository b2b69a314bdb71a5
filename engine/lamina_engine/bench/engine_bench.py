"""`lamina bench engine`: replay seeded workloads against the offline engine, side by side.

    lamina bench engine --random-config moe-bench --workload arxiv-like --scale 0.25 \
        --rates 1,2 --schedulers chunked,layered --chunks 128 --requests 24 --out runs/arxiv

Every combination of workload x rate x configuration runs on a fresh Engine (so no run reuses
another's prefix cache) over the same prompts. The clock is simulated (replay.py): by default
each step advances it by the step's measured model time; `--cost-model h100` advances it by a
roofline estimate instead (cost_model.py). Writes results.json, frontier-<workload>.png and
attainment-<workload>.png into --out and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path

from lamina_engine.bench.cost_model import DEVICES, CostModel
from lamina_engine.bench.plots import plot_attainment, plot_frontier
from lamina_engine.bench.random_models import RANDOM_CONFIGS, make_random_model
from lamina_engine.bench.replay import SpeedUnavailable, build_engine, measured_clock, replay
from lamina_engine.bench.report import format_table, ratios, summarize
from lamina_engine.bench.workloads import WORKLOADS, length_bounds, make_workload

log = logging.getLogger(__name__)


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def _speeds(text: str) -> list[int | float | None]:
    """'none,6,0.75' -> [None, 6, 0.75]: None is full depth (SPEED off); a float is a fraction
    of the layers."""
    return [
        None if x in ("none", "full") else float(x) if "." in x else int(x)
        for x in text.split(",")
        if x
    ]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="lamina bench engine", description=__doc__.split("\n")[0])
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--model", help="HF checkpoint folder")
    src.add_argument(
        "--random-config",
        choices=sorted(RANDOM_CONFIGS),
        default=None,
        help="a built-in random Qwen3-MoE (default moe-bench)",
    )
    ap.add_argument(
        "--workload", default="arxiv-like", help=f"comma list of: {', '.join(WORKLOADS)}"
    )
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument(
        "--rate",
        "--rates",
        dest="rates",
        type=_floats,
        default=[1.0],
        help="Poisson arrival rate(s), requests per simulated second (comma list)",
    )
    ap.add_argument(
        "--scheduler",
        "--schedulers",
        dest="schedulers",
        default="chunked,layered",
        help="comma list of chunked, layered",
    )
    ap.add_argument(
        "--chunk",
        "--chunks",
        dest="chunks",
        type=_ints,
        default=[512],
        help="chunked: token budget(s) per step (comma list)",
    )
    ap.add_argument(
        "--group-tokens",
        type=int,
        default=None,
        help="layered: prefill tokens per group step (default: the first --chunk)",
    )
    ap.add_argument("--layered-budget", type=int, default=8192, help="layered: cohort budget B")
    ap.add_argument("--layered-max-groups", type=int, default=16, help="layered: Gmax")
    ap.add_argument(
        "--speed-prefill-layers",
        dest="speeds",
        type=_speeds,
        default=[None],
        help="SPEED cutoff(s) K (layer count, or fraction like 0.75); 'none' = full depth",
    )
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every workload length")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-num-seqs", type=int, default=64)
    ap.add_argument(
        "--num-blocks",
        type=int,
        default=None,
        help="KV blocks (default: enough for every request at once)",
    )
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--ttft-slo", type=float, default=2.0, help="seconds")
    ap.add_argument("--tbt-slo", type=float, default=0.2, help="seconds (vs each request's p99)")
    ap.add_argument(
        "--cost-model",
        choices=sorted(DEVICES),
        default=None,
        help="advance the clock by a roofline estimate on this device, not CPU time",
    )
    ap.add_argument(
        "--step-overhead",
        type=float,
        default=0.0,
        help="cost model: fixed seconds added per step (launches, scheduling)",
    )
    ap.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--dtype", default="float32", choices=["auto", "float32", "bfloat16"])
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    ap.add_argument("--out", default="runs/bench-engine", help="output folder")
    ap.add_argument("--no-plots", action="store_true")
    return ap


def _configs(args) -> list[dict]:
    out = []
    for sched in [s.strip() for s in args.schedulers.split(",") if s.strip()]:
        if sched not in ("chunked", "layered"):
            raise ValueError(f"unknown scheduler {sched!r}: use chunked or layered")
        for k in args.speeds:
            suffix = "" if k is None else f"+speed{k}"
            if sched == "chunked":
                out += [
                    dict(scheduler=sched, chunk=c, speed=k, label=f"chunked-{c}{suffix}")
                    for c in args.chunks
                ]
            else:
                out.append(
                    dict(scheduler=sched, chunk=args.chunks[0], speed=k, label=f"layered{suffix}")
                )
    return out


def run_sweep(args, model: str) -> dict:
    from lamina_engine.models.checkpoint import read_config

    mcfg = read_config(model)
    workloads = [w.strip() for w in args.workload.split(",") if w.strip()]
    group_tokens = args.group_tokens or args.chunks[0]
    runs, skipped = [], []
    # The engine needs budget >= max_num_seqs; every configuration gets the same cap.
    max_seqs = min(args.max_num_seqs, *args.chunks)
    for wl in workloads:
        (_, phi), (_, ohi) = length_bounds(wl, args.scale)
        max_len = phi + ohi + 1
        for rate in args.rates:
            reqs = make_workload(
                wl, args.requests, rate, seed=args.seed, scale=args.scale, vocab=mcfg.vocab_size
            )
            blocks = (
                args.num_blocks
                or sum(
                    -(-(len(r.prompt_token_ids) + r.max_tokens) // args.block_size) for r in reqs
                )
                + args.max_num_seqs
            )
            for cfg in _configs(args):
                settings = dict(
                    dtype=args.dtype,
                    device=args.device,
                    scheduling_policy=cfg["scheduler"],
                    max_num_seqs=max_seqs,
                    max_num_batched_tokens=cfg["chunk"],
                    layered_budget=args.layered_budget,
                    layered_max_groups=args.layered_max_groups,
                    layered_group_tokens=group_tokens,
                    block_size=args.block_size,
                    num_gpu_blocks=blocks,
                    max_model_len=max_len,
                    enable_prefix_caching=True,
                )
                try:
                    engine = build_engine(model, speed_prefill_layers=cfg["speed"], **settings)
                except SpeedUnavailable as exc:
                    skipped.append({"label": cfg["label"], "reason": str(exc)})
                    print(f"skipping {cfg['label']}: {exc}")
                    continue
                if args.cost_model:
                    itemsize = engine.runner.dtype.itemsize
                    clock = CostModel(
                        mcfg,
                        args.cost_model,
                        model_itemsize=itemsize,
                        step_overhead=args.step_overhead,
                    ).step_seconds
                else:
                    clock = measured_clock
                result = replay(engine, reqs, clock)
                s = summarize(result, ttft_slo=args.ttft_slo, tbt_slo=args.tbt_slo)
                run = {"workload": wl, "rate": rate, **cfg, **s}
                runs.append(run)
                print(
                    f"{wl} rate={rate:g} {cfg['label']}: TTFT p50 {s['ttft_p50'] * 1e3:.1f} ms,"
                    f" TBT p99 {s['tbt_p99'] * 1e3:.2f} ms, expert "
                    f"{s['expert_bytes_per_output_token'] / 1e6:.2f} MB/out tok "
                    f"({s['wall_seconds']:.0f} s wall)",
                    flush=True,
                )
    chunked = [c for c in _configs(args) if c["scheduler"] == "chunked" and c["speed"] is None]
    baseline = chunked[0]["label"] if chunked else None
    return {
        "clock": f"cost-model:{args.cost_model}" if args.cost_model else "measured-model-time",
        "model": args.random_config or args.model,
        "model_layers": mcfg.num_layers,
        "scale": args.scale,
        "seed": args.seed,
        "slo": {"ttft_s": args.ttft_slo, "tbt_p99_s": args.tbt_slo},
        "runs": runs,
        "ratios_vs_baseline": ratios(runs, baseline) if baseline else [],
        "skipped": skipped,
    }


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or str(
            make_random_model(args.random_config or "moe-bench", tmp, args.seed)
        )
        if args.random_config is None and args.model is None:
            args.random_config = "moe-bench"
        report = run_sweep(args, model)
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    if report["runs"]:
        print(format_table(report["runs"]))
    for r in report["ratios_vs_baseline"]:
        print(
            f"{r['workload']} rate={r['rate']:g} {r['label']} / {r['baseline']}: expert "
            f"bytes/out tok x{r['expert_bytes_per_output_token']:.3f}, TTFT p50 "
            f"x{r['ttft_p50']:.3f}, TBT p99 x{r['tbt_p99']:.3f}, peak KV "
            f"x{r['peak_kv_bytes']:.3f}"
        )
    if not args.no_plots and report["runs"]:
        for wl in sorted({r["workload"] for r in report["runs"]}):
            runs = [r for r in report["runs"] if r["workload"] == wl]
            title = f"{wl}, {report['model']}, clock: {report['clock']}"
            plot_frontier(runs, out / f"frontier-{wl}.png", title)
            plot_attainment(runs, out / f"attainment-{wl}.png", title)
    print(f"wrote {out / 'results.json'}")
    return 0
