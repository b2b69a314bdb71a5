"""`lamina bench serve`: drive a running OpenAI-compatible endpoint with a seeded workload.

    lamina bench serve --url http://127.0.0.1:8000 --workload sharegpt-like --rate 2 \\
        --requests 40 --scale 0.5 --max-prompt-tokens 400 --max-output-tokens 64 --out r.json

Requests come from `workloads.make_workload` (seeded lengths, Poisson arrivals) and are sent at
their arrival times on the real wall clock with the official `openai` async client as streaming
completions (`ignore_eos`, greedy, so every request produces exactly its `max_tokens`). At most
`--concurrency` are in flight; a request waiting for a slot is already late, so its TTFT counts
from its arrival, as a user would see it. `--time-limit` bounds the whole run: requests still
running then are cancelled and reported as errors.

Token timing (`--token-timing`): `text` (default) stamps every chunk that carries text or the
finish reason, as a user sees tokens arrive; a token that decodes to no text (a partial UTF-8
sequence) arrives with the next one, so `timed_tokens` in the report can be below
`output_tokens`. `logprobs` asks for `logprobs=0`, which makes the server send a chunk for every
token and say how many tokens each carries: exact stamps, but Lamina's router serves logprob
requests on the decode pod directly (no disaggregation), so use it only against a unified
engine. TTFT/TBT/E2E percentiles come from `metrics.latency_summary`.
Loopback only: the benchmark refuses any other host.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from lamina_engine.bench.metrics import RequestTiming, latency_summary
from lamina_engine.bench.workloads import WORKLOADS, BenchRequest, make_workload

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@dataclass
class Outcome:
    """What one request did: its token times (seconds after the run's start) or its error."""

    request: BenchRequest
    timing: RequestTiming
    output_tokens: int = 0  # from the usage chunk (or counted, if the server sent none)
    error: str | None = None
    finish_reason: str | None = None


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="lamina bench serve", description=__doc__.split("\n")[0])
    ap.add_argument("--url", required=True, help="the server's base, http://127.0.0.1:PORT")
    ap.add_argument("--workload", choices=list(WORKLOADS), default="sharegpt-like")
    ap.add_argument("--rate", type=float, default=1.0, help="Poisson arrivals, requests/s")
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every workload length")
    ap.add_argument("--max-prompt-tokens", type=int, default=None, help="truncate prompts")
    ap.add_argument("--max-output-tokens", type=int, default=None, help="cap max_tokens")
    ap.add_argument(
        "--vocab", type=int, default=256, help="prompt token ids are drawn from [1, vocab)"
    )
    ap.add_argument(
        "--prompt-format",
        choices=["ids", "text"],
        default="ids",
        help="ids: token-id prompts of the exact length; text: one word per id (the server's "
        "tokenizer decides the length; usage reports it)",
    )
    ap.add_argument(
        "--token-timing",
        choices=["text", "logprobs"],
        default="text",
        help="text: stamp chunks as they arrive (keeps disaggregation on); logprobs: exact "
        "per-token stamps (the router then skips disaggregation)",
    )
    ap.add_argument("--concurrency", type=int, default=16, help="most requests in flight")
    ap.add_argument("--time-limit", type=float, default=600.0, help="seconds for the whole run")
    ap.add_argument("--request-timeout", type=float, default=300.0, help="seconds per request")
    ap.add_argument("--model-name", default=None, help="default: the first of /v1/models")
    ap.add_argument("--out", default=None, help="write the JSON report here")
    return ap


def check_loopback(url: str) -> str:
    """The base URL ending in /v1; ValueError unless it is http(s) on a loopback host."""
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or parsed.hostname not in LOOPBACK:
        raise ValueError(
            f"--url must be http://127.0.0.1:PORT (loopback only), got {url!r}; "
            "the benchmark does not send load to other hosts"
        )
    base = url.rstrip("/")
    return base if base.endswith("/v1") else base + "/v1"


def shape_workload(args: argparse.Namespace) -> list[BenchRequest]:
    """The seeded trace, with prompts truncated and outputs capped by the scaling knobs."""
    for flag in ("max_prompt_tokens", "max_output_tokens", "concurrency"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be at least 1, got {value}")
    if not args.time_limit > 0 or not args.request_timeout > 0:
        raise ValueError("--time-limit and --request-timeout must be positive seconds")
    if args.vocab < 2:
        raise ValueError(f"--vocab must be at least 2, got {args.vocab}")
    reqs = make_workload(
        args.workload, args.requests, args.rate, seed=args.seed, scale=args.scale, vocab=args.vocab
    )
    out = []
    for r in reqs:
        ids = r.prompt_token_ids[: args.max_prompt_tokens] if args.max_prompt_tokens else None
        olen = min(r.max_tokens, args.max_output_tokens or r.max_tokens)
        out.append(BenchRequest(r.request_id, r.arrival, ids or r.prompt_token_ids, olen))
    return out


async def _one(client, model: str, req: BenchRequest, t0: float, sem, args) -> Outcome:
    timing = RequestTiming(req.request_id, req.arrival, len(req.prompt_token_ids))
    outcome = Outcome(req, timing)
    await asyncio.sleep(max(0.0, t0 + req.arrival - time.perf_counter()))
    prompt = req.prompt_token_ids
    if args.prompt_format == "text":
        prompt = " ".join(f"w{i}" for i in prompt)
    exact = args.token_timing == "logprobs"
    async with sem:
        try:
            stream = await client.completions.create(
                model=model, prompt=prompt, max_tokens=req.max_tokens, temperature=0.0,
                stream=True, stream_options={"include_usage": True},
                logprobs=0 if exact else None, extra_body={"ignore_eos": True}, timeout=args.request_timeout,
            )  # fmt: skip
            async for chunk in stream:
                now = time.perf_counter() - t0
                if chunk.usage is not None:
                    outcome.output_tokens = chunk.usage.completion_tokens
                    timing.prompt_tokens = chunk.usage.prompt_tokens
                for choice in chunk.choices:
                    if exact:
                        lp = choice.logprobs
                        n = len(lp.tokens) if lp is not None and lp.tokens else 0
                    else:
                        n = 1 if choice.text or choice.finish_reason else 0
                    timing.token_times.extend([now] * n)
                    outcome.finish_reason = choice.finish_reason or outcome.finish_reason
        except asyncio.CancelledError:
            outcome.error = "cancelled: the run's --time-limit passed"
            raise
        except Exception as exc:  # every failure is a result to report, not a crash
            outcome.error = f"{type(exc).__name__}: {exc}"[:300]
    if not outcome.output_tokens:
        outcome.output_tokens = len(timing.token_times)
    if outcome.error is None and outcome.output_tokens != req.max_tokens:
        outcome.error = f"got {outcome.output_tokens} tokens, asked for {req.max_tokens}"
    if outcome.error is None and not timing.token_times:
        outcome.error = "the stream carried no tokens"
    return outcome


async def run(args: argparse.Namespace) -> dict:
    """Send the trace and return the report (see `summarize`)."""
    import openai

    base = check_loopback(args.url)
    reqs = shape_workload(args)
    client = openai.AsyncOpenAI(base_url=base, api_key="unused", max_retries=0)
    try:
        model = args.model_name or (await client.models.list()).data[0].id
        sem = asyncio.Semaphore(args.concurrency)
        t0 = time.perf_counter()
        tasks = [asyncio.create_task(_one(client, model, r, t0, sem, args)) for r in reqs]
        done, pending = await asyncio.wait(tasks, timeout=args.time_limit)
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        wall = time.perf_counter() - t0
    finally:
        await client.close()
    outcomes = []
    for r, t in zip(reqs, tasks):
        if t in done and t.exception() is None:
            outcomes.append(t.result())
        else:
            timing = RequestTiming(r.request_id, r.arrival, len(r.prompt_token_ids))
            outcomes.append(Outcome(r, timing, error="cancelled: the run's --time-limit passed"))
    return summarize(args, model, outcomes, wall)


def summarize(args: argparse.Namespace, model: str, outcomes: list[Outcome], wall: float) -> dict:
    """JSON-ready report: settings, counts, latency percentiles (s) and throughput."""
    ok = [o for o in outcomes if o.error is None]
    timings = [o.timing for o in ok]
    makespan = max((t.token_times[-1] for t in timings), default=math.nan)
    out_tokens = sum(o.output_tokens for o in ok)
    prompt_tokens = sum(o.timing.prompt_tokens for o in ok)
    lat = latency_summary(timings) if timings else {}
    return {
        "url": args.url,
        "model": model,
        "workload": args.workload,
        "rate": args.rate,
        "seed": args.seed,
        "scale": args.scale,
        "max_prompt_tokens": args.max_prompt_tokens,
        "max_output_tokens": args.max_output_tokens,
        "prompt_format": args.prompt_format,
        "token_timing": args.token_timing,
        "concurrency": args.concurrency,
        "requests": len(outcomes),
        "completed": len(ok),
        "errors": len(outcomes) - len(ok),
        "error_samples": sorted({o.error for o in outcomes if o.error})[:5],
        "wall_s": wall,
        "makespan_s": makespan,
        "prompt_tokens": prompt_tokens,
        "output_tokens": out_tokens,
        "timed_tokens": sum(len(t.token_times) for t in timings),
        "output_tokens_per_s": out_tokens / makespan if ok else 0.0,
        "requests_per_s": len(ok) / makespan if ok else 0.0,
        "latency_s": lat,
    }


def format_report(rep: dict) -> str:
    lat = rep["latency_s"]
    lines = [
        f"{rep['workload']} @ {rep['rate']} req/s against {rep['url']} ({rep['model']}): "
        f"{rep['completed']}/{rep['requests']} completed, {rep['errors']} errors",
        f"  output {rep['output_tokens_per_s']:.1f} tok/s, {rep['requests_per_s']:.2f} req/s "
        f"over {rep['makespan_s']:.1f} s",
    ]
    for name in ("ttft", "tbt", "e2e"):
        if lat:
            ps = "  ".join(f"p{q} {lat[f'{name}_p{q}'] * 1000:8.1f}" for q in (50, 90, 99))
            lines.append(f"  {name.upper():4} ms  {ps}")
    lines += [f"  error: {e}" for e in rep["error_samples"]]
    return "\n".join(lines)


def _no_nan(value):
    """NaN (no samples, e.g. TBT of one-token outputs) becomes null: strict JSON has no NaN."""
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_no_nan(v) for v in value]
    return None if isinstance(value, float) and math.isnan(value) else value


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    rep = asyncio.run(run(args))
    print(format_report(rep))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(_no_nan(rep), indent=2, allow_nan=False) + "\n")
    return 0 if rep["errors"] == 0 else 1
