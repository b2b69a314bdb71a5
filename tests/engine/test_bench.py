"""lamina bench engine: workloads, the simulated-clock replay, metrics math and the outputs."""

from __future__ import annotations

import json
import math

import pytest

from lamina_engine.bench import engine_bench
from lamina_engine.bench.metrics import RequestTiming, attainment, latency_summary, percentile
from lamina_engine.bench.random_models import make_random_model
from lamina_engine.bench.replay import build_engine, measured_clock, replay
from lamina_engine.bench.report import summarize
from lamina_engine.bench.workloads import length_bounds, make_workload


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return str(make_random_model("tiny", tmp_path_factory.mktemp("tiny")))


# ---- workloads --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["sharegpt-like", "arxiv-like"])
def test_workload_is_deterministic_per_seed_and_in_range(name):
    a = make_workload(name, 200, 2.0, seed=7, vocab=1000)
    b = make_workload(name, 200, 2.0, seed=7, vocab=1000)
    c = make_workload(name, 200, 2.0, seed=8, vocab=1000)
    assert a == b
    assert [r.prompt_token_ids for r in a] != [r.prompt_token_ids for r in c]
    (plo, phi), (olo, ohi) = length_bounds(name)
    assert all(plo <= len(r.prompt_token_ids) <= phi for r in a)
    assert all(olo <= r.max_tokens <= ohi for r in a)
    assert all(0 < t < 1000 for r in a for t in r.prompt_token_ids)
    arrivals = [r.arrival for r in a]
    assert arrivals == sorted(arrivals) and arrivals[0] == 0.0
    # Poisson process: the mean gap is 1/rate (200 draws: within 25%).
    assert 0.375 <= arrivals[-1] / 199 <= 0.625


def test_workload_shapes_differ_and_scale():
    share = make_workload("sharegpt-like", 300, 1.0, seed=0, vocab=100)
    arxiv = make_workload("arxiv-like", 300, 1.0, seed=0, vocab=100)
    share_mean = sum(len(r.prompt_token_ids) for r in share) / 300
    assert 150 <= share_mean <= 350  # lognormal around a 200-token median
    assert min(len(r.prompt_token_ids) for r in arxiv) >= 2048
    small = make_workload("arxiv-like", 50, 1.0, seed=0, scale=0.1, vocab=100)
    assert all(205 <= len(r.prompt_token_ids) <= 819 for r in small)
    assert all(10 <= r.max_tokens <= 25 for r in small)
    # The arrival process does not depend on the scale; prompts do not depend on the rate.
    assert [r.arrival for r in small] == [r.arrival for r in arxiv[:50]]
    fast = make_workload("arxiv-like", 300, 4.0, seed=0, vocab=100)
    assert [r.prompt_token_ids for r in fast] == [r.prompt_token_ids for r in arxiv]


def test_workload_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown workload"):
        make_workload("chat", 3, 1.0, vocab=10)
    with pytest.raises(ValueError, match="rate must be positive"):
        make_workload("arxiv-like", 3, 0.0, vocab=10)


# ---- metrics ----------------------------------------------------------------------------


def test_percentile_interpolates_linearly():
    xs = [4.0, 1.0, 3.0, 2.0]
    assert percentile(xs, 0) == 1.0 and percentile(xs, 100) == 4.0
    assert percentile(xs, 50) == 2.5
    assert percentile(xs, 90) == pytest.approx(3.7)
    assert percentile([5.0], 99) == 5.0
    assert math.isnan(percentile([], 50))


def test_attainment_needs_both_ttft_and_p99_tbt():
    ok = RequestTiming("a", 0.0, 10, [0.5, 0.6, 0.7])  # TTFT 0.5, TBTs 0.1
    slow_first = RequestTiming("b", 1.0, 10, [2.5, 2.6])  # TTFT 1.5
    stall = RequestTiming("c", 0.0, 10, [0.2, 0.3, 0.9])  # a 0.6 s gap: p99 TBT ~0.594
    single = RequestTiming("d", 0.0, 10, [0.9])  # no TBT: judged on TTFT
    reqs = [ok, slow_first, stall, single]
    assert attainment(reqs, ttft_slo=1.0, tbt_slo=0.2) == 0.5
    assert attainment(reqs, ttft_slo=2.0, tbt_slo=1.0) == 1.0
    s = latency_summary([ok, slow_first])
    assert s["ttft_p50"] == pytest.approx(1.0)
    assert s["tbt_p99"] == pytest.approx(0.1)
    assert s["e2e_p50"] == pytest.approx((0.7 + 1.6) / 2)


# ---- replay on the simulated clock --------------------------------------------------------


@pytest.mark.parametrize("scheduler", ["chunked", "layered"])
def test_replay_times_follow_step_records(tiny_model, scheduler):
    reqs = make_workload("arxiv-like", 5, 20.0, seed=1, scale=0.03, vocab=512)
    engine = build_engine(
        tiny_model,
        device="cpu",
        dtype="float32",
        scheduling_policy=scheduler,
        max_num_batched_tokens=32,
        layered_group_tokens=32,
        max_num_seqs=8,
        num_gpu_blocks=200,
    )
    result = replay(engine, reqs, lambda r: 0.01 * r.scheduled_tokens + 0.001)
    # The replay saw every step, and each step's simulated time is its clock function.
    assert [s.index for s in result.steps] == list(range(1, engine.stats.steps + 1))
    assert result.step_seconds == [0.01 * s.scheduled_tokens + 0.001 for s in result.steps]
    ends, t = [], 0.0
    for dt in result.step_seconds:
        t += dt
        ends.append(t)
    assert sum(len(r.token_times) for r in result.requests) == sum(
        s.tokens_sampled for s in result.steps
    )
    for bench, timing in zip(reqs, result.requests):
        assert len(timing.token_times) == bench.max_tokens
        # Every token lands at the end of a step, after the request arrived.
        assert all(any(math.isclose(x, e) for e in ends) for x in timing.token_times)
        assert timing.ttft > 0 and all(g > 0 for g in timing.tbts)
    assert sum(s.prefill_tokens for s in result.steps) == sum(len(r.prompt_token_ids) for r in reqs)
    assert all(s.kv_bytes_held > 0 for s in result.steps)
    if scheduler == "layered":
        assert any(s.num_groups > 1 for s in result.steps)


def test_replay_measured_clock_and_idle_gaps(tiny_model):
    # Two requests far apart: the clock jumps to the second arrival, so its TTFT is its own
    # prefill time only (no queueing behind the first).
    reqs = make_workload("sharegpt-like", 2, 0.001, seed=3, scale=0.2, vocab=512)
    engine = build_engine(tiny_model, device="cpu", dtype="float32", num_gpu_blocks=100)
    result = replay(engine, reqs, measured_clock)
    first, second = result.requests
    assert second.arrival > first.token_times[-1]
    measured = sum(s.model_seconds for s in result.steps)
    assert result.makespan == pytest.approx(second.arrival + second.e2e, rel=1e-9)
    assert first.e2e + second.e2e == pytest.approx(measured, rel=1e-6)


# ---- the CLI: JSON and plots ------------------------------------------------------------


def test_bench_engine_writes_json_and_pngs(tiny_model, tmp_path, capsys):
    out = tmp_path / "out"
    rc = engine_bench.main(
        [
            "--model", tiny_model, "--workload", "sharegpt-like", "--scale", "0.05",
            "--requests", "4", "--rates", "5,50", "--chunks", "16", "--max-num-seqs", "8",
            "--cost-model", "h100", "--ttft-slo", "0.001", "--tbt-slo", "0.001",
            "--out", str(out),
        ]
    )  # fmt: skip
    assert rc == 0
    report = json.loads((out / "results.json").read_text())
    assert report["clock"] == "cost-model:h100"
    labels = {(r["label"], r["rate"]) for r in report["runs"]}
    assert labels == {
        ("chunked-16", 5.0),
        ("chunked-16", 50.0),
        ("layered", 5.0),
        ("layered", 50.0),
    }
    wanted = sum(
        r.max_tokens for r in make_workload("sharegpt-like", 4, 5.0, scale=0.05, vocab=512)
    )
    for r in report["runs"]:
        assert r["output_tokens"] == wanted
        assert 0.0 <= r["attainment"] <= 1.0 and r["expert_bytes_per_output_token"] > 0
        assert r["ttft_p50"] <= r["ttft_p99"] and r["peak_kv_bytes"] > 0
    assert len(report["ratios_vs_baseline"]) == 2
    for name in ("frontier-sharegpt-like.png", "attainment-sharegpt-like.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000
    assert "| chunked-16 |" in capsys.readouterr().out


def test_cost_model_is_a_roofline_over_counted_work(tiny_model):
    from lamina_engine.bench.cost_model import CostModel
    from lamina_engine.engine_stats import StepRecord
    from lamina_engine.models.checkpoint import read_config

    cm = CostModel(read_config(tiny_model), "h100", model_itemsize=4)

    def rec(**kw):
        base = dict(index=1, model_seconds=9.0, prefill_tokens=0, decode_tokens=1,
                    scheduled_tokens=1, token_layers=4, attention_pairs=400, kv_tokens_read=400,
                    prompt_layer_tokens=0, layer_group=None, num_groups=0, tokens_sampled=1,
                    expert_loads=8, expert_bytes=8 * 3 * 64 * 32 * 4, kv_bytes_held=0,
                    num_running=1, num_waiting=0, preempted=0)  # fmt: skip
        return StepRecord(**{**base, **kw})

    decode = rec()
    # One decode token is memory bound: time is bytes / bandwidth, not the measured 9 s.
    assert cm.step_seconds(decode) == pytest.approx(cm.step_bytes(decode) / 3.35e12)
    # Expert bytes are re-priced from fp32 (engine) to bf16 (device): half per byte counted.
    more = rec(expert_bytes=decode.expert_bytes * 2)
    assert cm.step_bytes(more) - cm.step_bytes(decode) == pytest.approx(decode.expert_bytes / 2)
    # A huge prefill batch becomes compute bound.
    big = rec(token_layers=4 * 10**6, attention_pairs=0, decode_tokens=0, tokens_sampled=0)
    assert cm.step_seconds(big) == pytest.approx(cm.step_flops(big) / 989e12)
    with pytest.raises(ValueError, match="unknown device"):
        CostModel(read_config(tiny_model), "tpu")


def test_replay_with_speed_cuts_prompt_work_and_kv(tiny_model):
    reqs = make_workload("arxiv-like", 3, 50.0, seed=2, scale=0.03, vocab=512)
    results = {}
    for k in (None, 2):  # tiny has 4 layers: K = 2 is half depth
        engine = build_engine(
            tiny_model, speed_prefill_layers=k, device="cpu", dtype="float32",
            max_num_batched_tokens=32, max_num_seqs=8, num_gpu_blocks=200,
        )  # fmt: skip
        results[k] = summarize(replay(engine, reqs, measured_clock), ttft_slo=1.0, tbt_slo=1.0)
    full, speed = results[None], results[2]
    assert full["output_tokens"] == speed["output_tokens"]
    # Prompt tokens run 2 of 4 layers (the anchor and last token still run all 4).
    prompt = full["prompt_tokens"]
    assert full["prefill_token_layers"] == 4 * prompt
    assert 2 * prompt < speed["prefill_token_layers"] < 2 * prompt + 2 * 2 * len(reqs) + 1
    assert speed["peak_kv_bytes"] < 0.8 * full["peak_kv_bytes"]
