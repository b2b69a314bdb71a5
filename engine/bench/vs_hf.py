"""Lamina vs HF transformers generate(): output tokens/s on the same requests, same weights.

    lamina bench vs-hf [--requests 64] [--out runs/vs_hf.json]

A randomly initialised Qwen3-MoE (123M parameters, 82% of them experts) is saved with save_pretrained; 64 requests
with seeded prompt lengths 32-512 and output lengths 16-256 run greedy with EOS ignored. HF runs
them in left-padded batches of 16 (each batch generates to its longest output; only the tokens a
request asked for count), Lamina with continuous batching and max_num_seqs=16. Token agreement
is checked request by request; a divergence is reported with HF's top-2 logit margin there.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import torch

from lamina_engine.bench.random_models import RANDOM_CONFIGS

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


def compare(hf_tokens, lamina_tokens, margins) -> dict:
    identical, divergences = 0, []
    for i, (a, b) in enumerate(zip(hf_tokens, lamina_tokens)):
        if a == b:
            identical += 1
            continue
        j = next(k for k in range(min(len(a), len(b))) if a[k] != b[k])
        divergences.append({"request": i, "position": j, "hf_top2_margin": float(margins[i][j])})
    return {"identical_requests": identical, "divergences": divergences}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="lamina bench vs-hf")
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    ap.add_argument("--out", default=None, help="write the JSON result here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        n_params = make_model(folder, args.seed)
        reqs = make_requests(args.requests, args.seed, BENCH_CONFIG["vocab_size"])
        useful = sum(o for _, o in reqs)
        lam_tokens, lam_s, stats = run_lamina(folder, reqs, args.batch)
        hf_tokens, margins, hf_s = run_hf(folder, reqs, args.batch)
    result = {
        "params": n_params,
        "requests": len(reqs),
        "output_tokens": useful,
        "prompt_tokens": sum(len(p) for p, _ in reqs),
        "hf_seconds": round(hf_s, 2),
        "lamina_seconds": round(lam_s, 2),
        "hf_tokens_per_s": round(useful / hf_s, 2),
        "lamina_tokens_per_s": round(useful / lam_s, 2),
        "speedup": round(hf_s / lam_s, 2),
        "lamina_steps": stats.steps,
        "lamina_preemptions": stats.preemptions,
        "lamina_expert_bytes_loaded": stats.expert_bytes_loaded,
        **compare(hf_tokens, lam_tokens, margins),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return 0
