"""One decode step of the vs-hf model, timed in this process's CPU seconds.

    python -m lamina_engine.bench.decode_step [--seqs 16] [--steps 15] [--threads 1]

The first `--seqs` vs-hf prompts (seeded lengths 32-512) are prefilled, then `--steps` decode
steps of all of them run three times; each pass prints ms per step of this process's CPU time
(time.process_time: on a shared host, time other processes take from the cores is not counted,
unlike wall time) and wall time. Use it to compare two commits back to back (PYTHONPATH at each
one's engine/ folder): it is far less noisy than a whole `lamina bench vs-hf` run.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from lamina_engine.bench.vs_hf import BENCH_CONFIG, make_model, make_requests


def time_decode_steps(engine, seqs: int, steps: int) -> list[str]:
    """Prefills `seqs` vs-hf prompts, then times three passes of `steps` decode steps."""
    from lamina_engine import SamplingParams

    reqs = make_requests(seqs, 0, BENCH_CONFIG["vocab_size"])
    params = SamplingParams(temperature=0.0, max_tokens=1024, ignore_eos=True)
    for i, (prompt, _) in enumerate(reqs):
        engine.add_request(str(i), prompt, params)
    running = engine.scheduler.running
    while len(running) < seqs or any(s.num_computed_tokens < s.num_tokens - 1 for s in running):
        engine.step()
        running = engine.scheduler.running
    engine.step()  # the first all-decode step (warm-up)
    lines = []
    for _ in range(3):
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for _ in range(steps):
            engine.step()
        cpu = (time.process_time() - cpu0) / steps
        wall = (time.perf_counter() - wall0) / steps
        lines.append(f"decode step, {seqs} seqs: {cpu * 1e3:.1f} ms CPU, {wall * 1e3:.1f} ms wall")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lamina_engine.bench.decode_step")
    ap.add_argument("--seqs", type=int, default=16)
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    if not 1 <= args.seqs <= 64 or args.steps < 1 or args.threads < 1:
        ap.error("--seqs must be in [1, 64]; --steps and --threads at least 1")
    torch.set_num_threads(args.threads)
    from lamina_engine import LLM

    with tempfile.TemporaryDirectory() as tmp:
        make_model(Path(tmp), seed=0)
        engine = LLM(tmp, dtype="float32", device="cpu", max_num_seqs=args.seqs).engine
        for line in time_decode_steps(engine, args.seqs, args.steps):
            print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
