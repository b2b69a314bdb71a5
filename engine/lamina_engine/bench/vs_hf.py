"""Lamina vs HF transformers generate(): output tokens/s on the same requests, same weights.

    lamina bench vs-hf [--requests 64] [--repeats 3] [--threads 1] [--out runs/vs_hf.json]

A randomly initialised Qwen3-MoE (123M parameters, 82% of them experts) is saved with
save_pretrained; 64 requests with seeded prompt lengths 32-512 and output lengths 16-256 run
greedy with EOS ignored. HF runs them in left-padded batches of 16 (each batch generates to its
longest output; only the tokens a request asked for count), Lamina with continuous batching and
max_num_seqs=16, alternating for --repeats pairs. Token agreement is checked request by request;
a divergence is reported with HF's top-2 logit margin there and HF's closest routing choice on
the way to it (a router tie that rounding can break either way).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from lamina_engine.bench.random_models import RANDOM_CONFIGS
from lamina_engine.cpu_reproducibility import mkl_cnr_branch

BENCH_CONFIG = RANDOM_CONFIGS["vs-hf"]


def make_model(folder: Path, seed: int) -> int:
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen3MoeConfig(**BENCH_CONFIG)
    model = Qwen3MoeForCausalLM(cfg).eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    model.save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


def make_requests(n: int, seed: int, vocab: int) -> list[tuple[list[int], int]]:
    rng = random.Random(seed)
    reqs = []
    for _ in range(n):
        plen, olen = rng.randint(32, 512), rng.randint(16, 256)
        reqs.append(([rng.randrange(1, vocab) for _ in range(plen)], olen))
    return reqs


def run_hf(folder: Path, reqs, batch: int) -> tuple[list[list[int]], list[torch.Tensor], float]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tokens, margins = [], []
    t0 = time.perf_counter()
    for i in range(0, len(reqs), batch):
        group = reqs[i : i + batch]
        width = max(len(p) for p, _ in group)
        ids = torch.zeros(len(group), width, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, (p, _) in enumerate(group):
            ids[r, width - len(p) :] = torch.tensor(p)
            mask[r, width - len(p) :] = 1
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                do_sample=False,
                pad_token_id=0,
                eos_token_id=None,
                max_new_tokens=max(o for _, o in group),
                output_scores=True,
                return_dict_in_generate=True,
            )
        scores = torch.stack(out.scores, 1)  # [B, steps, V]
        for r, (_, olen) in enumerate(group):
            tokens.append(out.sequences[r, width : width + olen].tolist())
            top2 = scores[r, :olen].topk(2, dim=-1).values
            margins.append(top2[:, 0] - top2[:, 1])
    return tokens, margins, time.perf_counter() - t0


def run_lamina(folder: Path, reqs, max_num_seqs: int):
    from lamina_engine import LLM, SamplingParams

    llm = LLM(str(folder), dtype="float32", device="cpu", max_num_seqs=max_num_seqs)
    params = [SamplingParams(temperature=0.0, max_tokens=o, ignore_eos=True) for _, o in reqs]
    t0 = time.perf_counter()
    outs = llm.generate([p for p, _ in reqs], params)
    return [o.token_ids for o in outs], time.perf_counter() - t0, llm.stats


def changed_requests(first: list[list[int]], again: list[list[int]]) -> set[int]:
    """Indices of the requests whose tokens differ between two runs of the same side."""
    return {i for i, (a, b) in enumerate(zip(first, again)) if a != b}


def cpu_model() -> dict:
    """The host's CPU model and its AVX-512/AMX flags (numbers mean little without them)."""
    info = {"model": platform.processor() or platform.machine(), "avx512": [], "amx": []}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            info["model"] = value.strip()
        elif key.strip() == "flags":
            flags = value.split()
            info["avx512"] = sorted(f for f in flags if f.startswith("avx512"))
            info["amx"] = sorted(f for f in flags if f.startswith("amx"))
            break
    return info


def compare(hf_tokens, lamina_tokens, margins) -> dict:
    identical, divergences = 0, []
    for i, (a, b) in enumerate(zip(hf_tokens, lamina_tokens)):
        if a == b:
            identical += 1
            continue
        j = next(k for k in range(min(len(a), len(b))) if a[k] != b[k])
        divergences.append({"request": i, "position": j, "hf_top2_margin": float(margins[i][j])})
    return {"identical_requests": identical, "divergences": divergences}


def router_margin(model, tokens: list[int]) -> dict:
    """The closest expert choice HF's routers made over `tokens` (one forward): the smallest
    gap between the k-th and (k+1)-th routing probability, and where. A gap at float-rounding
    level is a tie that any change of summation order may break the other way, sending the
    token to another expert and changing every later logit by far more than rounding."""
    gaps: list[torch.Tensor] = []

    def hook(module, _inputs, output) -> None:
        probs = torch.softmax(output[0].float(), dim=-1)  # router logits [T, E]
        top = probs.topk(module.top_k + 1, dim=-1).values
        gaps.append(top[:, -2] - top[:, -1])  # [T]

    routers = [layer.mlp.gate for layer in model.model.layers if hasattr(layer.mlp, "gate")]
    handles = [r.register_forward_hook(hook) for r in routers]
    try:
        with torch.inference_mode():
            model(input_ids=torch.tensor([tokens]))
    finally:
        for h in handles:
            h.remove()
    stacked = torch.stack(gaps)  # [layers, T]
    layer, position = divmod(int(stacked.argmin()), stacked.shape[1])
    return {"router_margin": float(stacked.min()), "layer": layer, "position": position}


def explain_divergences(folder: Path, reqs, hf_tokens, divergences: list[dict]) -> None:
    """Adds to each divergence HF's closest routing decision on the path to the diverging
    token (prompt + HF's tokens before it), next to its top-2 logit margin there."""
    if not divergences:
        return
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    for d in divergences:
        prompt = reqs[d["request"]][0]
        path = prompt + hf_tokens[d["request"]][: d["position"]]
        found = router_margin(model, path)
        d["hf_router_margin"] = found["router_margin"]
        d["hf_router_margin_at"] = {
            "layer": found["layer"],
            "position": found["position"],  # in prompt + outputs; the prompt has len(prompt)
            "in_prompt": found["position"] < len(prompt),
        }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="lamina bench vs-hf")
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=1, help="Lamina/HF pairs, alternating")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    ap.add_argument("--out", default=None, help="write the JSON result here")
    args = ap.parse_args(argv)
    if args.repeats < 1 or args.requests < 1:
        ap.error("--repeats and --requests must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        n_params = make_model(folder, args.seed)
        reqs = make_requests(args.requests, args.seed, BENCH_CONFIG["vocab_size"])
        useful = sum(o for _, o in reqs)
        # Lamina and HF alternate, so a shift in the host's speed (a shared VM's neighbours
        # move this box by 15-20% between minutes) lands on both sides of a pair.
        runs, first = [], None
        drift = {"lamina": set(), "hf": set()}  # requests whose tokens changed between repeats
        for _ in range(args.repeats):
            lam_tokens, lam_s, stats = run_lamina(folder, reqs, args.batch)
            hf_tokens, margins, hf_s = run_hf(folder, reqs, args.batch)
            if first is None:
                first = (lam_tokens, hf_tokens, margins, stats)
            drift["lamina"] |= changed_requests(first[0], lam_tokens)
            drift["hf"] |= changed_requests(first[1], hf_tokens)
            runs.append({
                "hf_seconds": round(hf_s, 2),
                "lamina_seconds": round(lam_s, 2),
                "hf_tokens_per_s": round(useful / hf_s, 2),
                "lamina_tokens_per_s": round(useful / lam_s, 2),
                "speedup": round(hf_s / lam_s, 2),
            })  # fmt: skip
        lam_tokens, hf_tokens, margins, stats = first
        agreement = compare(hf_tokens, lam_tokens, margins)
        explain_divergences(folder, reqs, hf_tokens, agreement["divergences"])
    result = {
        "params": n_params,
        "requests": len(reqs),
        "output_tokens": useful,
        "prompt_tokens": sum(len(p) for p, _ in reqs),
        "threads": torch.get_num_threads(),
        "runs": runs,
        "median_speedup": round(statistics.median(r["speedup"] for r in runs), 2),
        "lamina_steps": stats.steps,
        "lamina_preemptions": stats.preemptions,
        "lamina_expert_bytes_loaded": stats.expert_bytes_loaded,
        # Requests whose greedy tokens differed from the first repeat, per side. Lamina's must
        # be empty (same batches each repeat; MKL in CNR mode, oneDNN deterministic); HF's is
        # reported.
        "repeat_drift": {side: sorted(ids) for side, ids in drift.items()},
        "cpu": cpu_model(),
        # MKL's CNR branch for this process (both sides): "OFF" means alignment-dependent
        # MKL results, i.e. no run-to-run guarantee (lamina_engine/cpu_reproducibility.py)
        "mkl_cbwr": mkl_cnr_branch(),
        "load_average": list(os.getloadavg()),
        **agreement,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    if drift["hf"]:
        print(f"HF's greedy tokens changed between repeats for requests {sorted(drift['hf'])} "
              "(HF's side drifted; reported, not failed)", file=sys.stderr)  # fmt: skip
    if drift["lamina"]:
        print(f"Lamina's greedy tokens changed between repeats for requests "
              f"{sorted(drift['lamina'])}: not deterministic", file=sys.stderr)  # fmt: skip
        return 1
    return 0
