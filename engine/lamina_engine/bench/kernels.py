"""`lamina bench kernels`: each Triton kernel beside the torch path, as fractions of the peak
memory bandwidth and bf16 FLOP/s measured on the same device in the same run.

    python -m lamina_engine.bench.kernels --out bench-kernels   # JSON + Markdown table

On CUDA the shapes are a Qwen3-30B-A3B layer (128 experts, top-8, hidden 2048, expert width 768;
32 query / 4 kv heads of 128) in bf16: fused MoE at decode batch 64 and at 8,192 tokens, paged
decode attention at batch 64 x 4k context. Peaks: a 1 GiB device copy (read + write bytes) and an
8192^3 bf16 matmul. On the CPU (no CUDA) the same cases run at tiny shapes under Triton's
interpreter, so the harness itself is tested; those timings say nothing about a GPU.

Imports only torch, triton and lamina_engine's model/kernels code (the GPU check machine has no
pydantic/fastapi). Every case checks the Triton output against the torch path before timing it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

import lamina_engine.kernels  # noqa: F401  (interpreter on CUDA-less hosts, before triton.jit)
from lamina_engine.kernels.decode_attention import decode_attention
from lamina_engine.kernels.fused_moe import fused_experts
from lamina_engine.models.attention import AttentionMetadata, paged_attention
from lamina_engine.models.moe import experts_forward, route

# (T tokens, E, K, D, I) and (B, context, H, KV, hd, block size); targets from issue 14.
GPU_SHAPES = dict(
    moe_decode=(64, 128, 8, 2048, 768),
    moe_prefill=(8192, 128, 8, 2048, 768),
    attention=(64, 4096, 32, 4, 128, 16),
)
CPU_SHAPES = dict(
    moe_decode=(4, 8, 2, 64, 32),
    moe_prefill=(32, 8, 2, 64, 32),
    attention=(2, 64, 4, 2, 32, 16),
)
TARGETS = {"moe_decode": ("bandwidth", 0.60), "moe_prefill": ("flops", 0.40),
           "attention": ("bandwidth", 0.70)}  # fmt: skip


@dataclass
class Result:
    case: str
    path: str  # "triton" or "torch"
    shape: str
    ms: float
    bytes: int
    flops: int
    gbps: float
    tflops: float
    frac_peak_bw: float
    frac_peak_flops: float
    target: str  # e.g. "bandwidth >= 0.60" (Triton rows only)
    meets_target: bool | None
    max_abs_err: float


def _time_ms(fn: Callable[[], object], device: torch.device, iters: int) -> float:
    """Median milliseconds of fn() over `iters` runs after one warm-up (compile/autotune)."""
    fn()
    if device.type != "cuda":
        times = []
        for _ in range(iters):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)
    torch.cuda.synchronize(device)
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    for s, e in zip(starts, ends):
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize(device)
    return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends))


def measure_peaks(device: torch.device, dtype: torch.dtype, iters: int) -> dict:
    """Achievable peaks on this device now: copy bandwidth (bytes read + written per second)
    and matmul FLOP/s in `dtype`."""
    n_bytes = (1 << 30) if device.type == "cuda" else (1 << 24)
    src = torch.empty(n_bytes // 2, dtype=torch.bfloat16, device=device).fill_(1)
    dst = torch.empty_like(src)
    copy_ms = _time_ms(lambda: dst.copy_(src), device, iters)
    n = 8192 if device.type == "cuda" else 512
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    mm_ms = _time_ms(lambda: a @ b, device, iters)
    return {
        "copy_bytes": 2 * n_bytes,
        "bandwidth_gbps": 2 * n_bytes / copy_ms / 1e6,
        "matmul_n": n,
        "matmul_tflops": 2 * n**3 / mm_ms / 1e9,
    }


def _moe_case(name, shape, device, dtype, iters, gen):
    t, e, k, d, i = shape
    x = torch.randn(t, d, generator=gen).to(device, dtype)
    w13 = (torch.randn(e, 2 * i, d, generator=gen) / d**0.5).to(device, dtype)
    w2 = (torch.randn(e, d, i, generator=gen) / i**0.5).to(device, dtype)
    weights, ids = route(torch.randn(t, e, generator=gen).to(device), k, renormalize=True)
    weights = weights.to(dtype)
    out, counts = fused_experts(x, weights, ids, w13, w2)
    ref, _ = experts_forward(x, weights, ids, w13, w2)
    err = (out.float() - ref.float()).abs().max().item()
    active = int((counts > 0).sum())
    item = x.element_size()
    # Bytes: each active expert's three matrices once, x in, out written, the [P, I] and
    # [P, D] intermediates written and read. FLOPs: 2 per MAC over the three GEMMs.
    n_bytes = active * 3 * d * i * item + 2 * t * d * item + t * k * (2 * i + 2 * d) * item
    flops = 6 * t * k * d * i
    runs = {
        "triton": lambda: fused_experts(x, weights, ids, w13, w2),
        "torch": lambda: experts_forward(x, weights, ids, w13, w2),
    }
    label = f"T={t} E={e} top{k} D={d} I={i} active={active}"
    return [(name, p, label, _time_ms(fn, device, iters), n_bytes, flops, err)
            for p, fn in runs.items()]  # fmt: skip


def _attention_case(name, shape, device, dtype, iters, gen):
    b, ctx, h, kv, hd, bs = shape
    nblk = b * (-(-ctx // bs))
    cache = torch.randn(2, nblk, bs, kv, hd, generator=gen).to(device, dtype)
    q = torch.randn(b, h, hd, generator=gen).to(device, dtype)
    perm = torch.randperm(nblk, generator=gen).view(b, -1).tolist()
    md = AttentionMetadata.build([ctx - 1] * b, [1] * b, perm, bs, device)
    plan = md.plan
    tables, lens = md.block_tables, md.context_lens

    def triton_path():
        return decode_attention(q, cache, tables, lens, ctx)

    err = (triton_path().float() - paged_attention(q, cache, plan).float()).abs().max().item()
    n_bytes = b * ctx * kv * hd * 2 * cache.element_size() + 2 * q.numel() * q.element_size()
    flops = 4 * b * h * ctx * hd
    runs = {"triton": triton_path, "torch": lambda: paged_attention(q, cache, plan)}
    label = f"B={b} ctx={ctx} H={h} KV={kv} hd={hd} BS={bs}"
    return [(name, p, label, _time_ms(fn, device, iters), n_bytes, flops, err)
            for p, fn in runs.items()]  # fmt: skip


def run(device: torch.device, iters: int) -> dict:
    on_gpu = device.type == "cuda"
    dtype = torch.bfloat16 if on_gpu else torch.float32
    shapes = GPU_SHAPES if on_gpu else CPU_SHAPES
    gen = torch.Generator().manual_seed(0)
    peaks = measure_peaks(device, torch.bfloat16 if on_gpu else torch.float32, iters)
    rows = []
    with torch.no_grad():
        for name in ("moe_decode", "moe_prefill"):
            rows += _moe_case(name, shapes[name], device, dtype, iters, gen)
        rows += _attention_case("attention", shapes["attention"], device, dtype, iters, gen)
    results = []
    for name, path, label, ms, n_bytes, flops, err in rows:
        gbps, tflops = n_bytes / ms / 1e6, flops / ms / 1e9
        frac_bw, frac_fl = gbps / peaks["bandwidth_gbps"], tflops / peaks["matmul_tflops"]
        kind, goal = TARGETS[name]
        meets = None
        if path == "triton" and on_gpu:
            meets = (frac_bw if kind == "bandwidth" else frac_fl) >= goal
        target = f"{kind} >= {goal:.2f}" if path == "triton" else ""
        results.append(Result(name, path, label, round(ms, 4), n_bytes, flops, round(gbps, 2),
                              round(tflops, 3), round(frac_bw, 4), round(frac_fl, 4), target,
                              meets, err))  # fmt: skip
    return {
        "device": torch.cuda.get_device_name(device) if on_gpu else "cpu (Triton interpreter)",
        "dtype": str(dtype).removeprefix("torch."),
        "torch": torch.__version__,
        "triton": __import__("triton").__version__,
        "peaks": peaks,
        "results": [asdict(r) for r in results],
    }


def markdown(report: dict) -> str:
    p = report["peaks"]
    lines = [
        f"Device: {report['device']}, {report['dtype']}; torch {report['torch']}, "
        f"triton {report['triton']}. Measured peaks: copy {p['bandwidth_gbps']:.0f} GB/s, "
        f"matmul {p['matmul_tflops']:.1f} TFLOP/s ({p['matmul_n']}^3).",
        "",
        "| case | path | shape | ms | GB/s | TFLOP/s | of peak BW | of peak FLOP/s | target "
        "| met | max abs err |",
        "|---|---|---|---:|---:|---:|---:|---:|---|---|---:|",
    ]
    for r in report["results"]:
        met = "" if r["meets_target"] is None else ("yes" if r["meets_target"] else "no")
        lines.append(
            f"| {r['case']} | {r['path']} | {r['shape']} | {r['ms']:.3f} | {r['gbps']:.1f} | "
            f"{r['tflops']:.2f} | {r['frac_peak_bw']:.1%} | {r['frac_peak_flops']:.1%} | "
            f"{r['target']} | {met} | {r['max_abs_err']:.2e} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="lamina bench kernels", description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    ap.add_argument("--iters", type=int, default=None, help="timed runs (default 20 GPU, 1 CPU)")
    ap.add_argument("--out", default="bench-kernels", help="writes OUT.json and OUT.md")
    args = ap.parse_args(argv)
    name = args.device if args.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda but torch sees no CUDA device")
    device = torch.device(name)
    iters = args.iters or (20 if device.type == "cuda" else 1)
    report = run(device, iters)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(report)
    out.with_suffix(".md").write_text(table)
    print(table, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
