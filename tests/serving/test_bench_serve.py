"""`lamina bench serve` against a real unified server on loopback (tiny model, a few requests)."""

from __future__ import annotations

import json

import pytest

from lamina_engine.bench import serve_bench
from lamina_engine.cli import main as lamina_main


def _bench(url: str, out, *extra: str) -> dict:
    rc = lamina_main(
        ["bench", "serve", "--url", url, "--workload", "sharegpt-like", "--rate", "20",
         "--requests", "5", "--scale", "0.1", "--max-prompt-tokens", "24",
         "--max-output-tokens", "6", "--concurrency", "3", "--time-limit", "60",
         "--out", str(out), *extra]
    )  # fmt: skip
    assert rc == 0
    return json.loads(out.read_text())


def test_bench_serve_completes_every_request_and_reports_latencies(unified, tmp_path):
    rep = _bench(unified.url, tmp_path / "serve.json", "--token-timing", "logprobs")
    assert rep["requests"] == rep["completed"] == 5 and rep["errors"] == 0
    assert rep["model"] == "tiny-moe"
    # the seeded trace, capped: outputs are min(drawn length, 6) = 6 tokens each at scale 0.1
    assert rep["output_tokens"] == 5 * 6
    assert 0 < rep["prompt_tokens"] <= 5 * 24
    lat = rep["latency_s"]
    for name in ("ttft", "tbt", "e2e"):
        assert 0 < lat[f"{name}_p50"] <= lat[f"{name}_p90"] <= lat[f"{name}_p99"]
    assert lat["ttft_p50"] < lat["e2e_p50"]
    assert rep["output_tokens_per_s"] > 0 and rep["makespan_s"] > 0
    assert rep["timed_tokens"] == rep["output_tokens"]  # logprobs: one stamp per token


def test_bench_serve_keeps_the_router_disaggregating(stack, tmp_path):
    import httpx

    rep = _bench(stack.router.url, tmp_path / "disagg.json")
    assert rep["completed"] == 5 and rep["output_tokens"] == 30
    assert 5 <= rep["timed_tokens"] <= 30  # text timing: >= one stamped chunk per request
    metrics = httpx.get(f"{stack.router.url}/metrics").text
    disagg = [x for x in metrics.splitlines() if x.startswith("lamina_router_requests_total")
              and 'path="disagg"' in x]  # fmt: skip
    assert disagg and float(disagg[0].split()[-1]) >= 5
    assert sum(stack.fallbacks.values()) == 0  # the decode pod used the shipped KV


def test_bench_serve_refuses_non_loopback_hosts():
    with pytest.raises(ValueError, match="loopback only"):
        serve_bench.check_loopback("http://10.0.0.5:8000")
    assert serve_bench.check_loopback("http://127.0.0.1:9/") == "http://127.0.0.1:9/v1"


def test_bench_serve_reports_errors_when_nothing_listens(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    args = serve_bench.build_parser().parse_args(
        ["--url", f"http://127.0.0.1:{port}", "--requests", "2", "--rate", "50",
         "--model-name", "m", "--scale", "0.1", "--request-timeout", "5"]
    )  # fmt: skip
    import asyncio

    rep = asyncio.run(serve_bench.run(args))
    assert rep["completed"] == 0 and rep["errors"] == 2
    assert any("Connection" in e for e in rep["error_samples"])
