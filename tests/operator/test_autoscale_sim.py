"""The autoscaling simulation: the queueing model conserves work, runs are reproducible, and on
a burst `decide` beats the per-pool HPA baseline at no more GPU time (the property
docs/autoscaling.md reports on the full traces)."""

from __future__ import annotations

import json

import pytest

from lamina_operator.autoscaling.sim.cluster import Cluster
from lamina_operator.autoscaling.sim.profile import ServiceProfile
from lamina_operator.autoscaling.sim.report import controller, load_policy
from lamina_operator.autoscaling.sim.run import run_trace
from lamina_operator.autoscaling.sim.traces import TRACES, Request, Trace
from lamina_operator.cli import main

PROFILE = ServiceProfile()


def _burst(t: float) -> float:
    return 14.0 if 240 <= t < 420 else 3.0


SHORT_BURST = Trace("short-burst", 900, _burst, lambda t: "chat", "3 req/s, 3 min at 14")


def test_cluster_serves_every_request_with_exact_prefill_time():
    cluster = Cluster(PROFILE, prefill=1, decode=1)
    cluster.arrive(Request(0, 0.0, prompt=2400, output=10))
    for t in range(5):
        cluster.tick(float(t), 1.0)
    (job,) = cluster.done
    # 2400 tokens at 2400 tok/s = 1 s, then the KV hop, then the first decode step at batch 1
    step = PROFILE.step_seconds(1, warming=False)
    assert job.first_token == pytest.approx(1.0 + PROFILE.kv_hop_seconds + step)
    assert job.max_step == pytest.approx(step)
    assert cluster.decode.pods[0].kv_reserved == 0  # freed when it finished


def test_scale_in_drains_busy_pods_and_drops_starting_ones_first():
    cluster = Cluster(PROFILE, prefill=1, decode=2)
    cluster.arrive(Request(0, 0.0, prompt=100, output=500))
    for t in range(3):
        cluster.tick(float(t), 1.0)
    cluster.decode.scale_to(3, 3.0)  # one starting pod
    cluster.decode.scale_to(1, 3.0)  # removes the starting pod, drains one idle ready pod
    busy = [p for p in cluster.decode.pods if p.running]
    assert len(cluster.decode.live()) == 1 and busy and not busy[0].draining
    assert cluster.decode.reap(3.0, 120.0) == []
    assert len(cluster.decode.pods) == 1


def _busy_decode(pods: int) -> Cluster:
    cluster = Cluster(PROFILE, prefill=1, decode=pods)
    for i in range(pods):  # one long generation on each decode pod
        cluster.arrive(Request(i, 0.0, prompt=100, output=5000))
    for t in range(3):
        cluster.tick(float(t), 1.0)
    return cluster


def test_scale_in_drains_one_pod_per_pool_at_a_time_as_the_operator():
    cluster = _busy_decode(4)
    pool = cluster.decode
    assert pool.scale_to(1, 3.0) == 3  # 4 -> 1 asked: one pod drains, the pool counts 3
    assert sum(p.draining for p in pool.pods) == 1
    assert pool.scale_to(1, 18.0) == 3  # a drain is in progress: nothing more
    assert sum(p.draining for p in pool.pods) == 1
    assert pool.scale_to(4, 33.0) == 4  # demand rose: the drained pod serves again
    assert len(pool.pods) == 4 and not any(p.draining for p in pool.pods)


def test_drain_timeout_removes_the_pod_and_loses_its_requests():
    cluster = _busy_decode(2)  # 5000 tokens left on each pod: about 90 s of decoding
    cluster.drain_timeout = 30.0
    assert cluster.decode.scale_to(1, 3.0) == 1
    for t in range(3, 32):
        cluster.tick(float(t), 1.0)
    assert len(cluster.decode.pods) == 2 and not cluster.lost  # still draining at 31 s
    for t in range(32, 35):
        cluster.tick(float(t), 1.0)
    assert len(cluster.decode.pods) == 1 and len(cluster.lost) == 1


def test_runs_are_reproducible():
    policy = load_policy(None)
    a = run_trace(SHORT_BURST, controller("decide", policy, PROFILE), PROFILE, policy)
    b = run_trace(SHORT_BURST, controller("decide", policy, PROFILE), PROFILE, policy)
    assert (a.both_attained, a.gpu_hours, a.actions) == (b.both_attained, b.gpu_hours, b.actions)
    assert a.unfinished == 0 and a.requests > 3000


def test_decide_beats_per_pool_hpa_on_a_burst():
    policy = load_policy(None)
    ours = run_trace(SHORT_BURST, controller("decide", policy, PROFILE), PROFILE, policy)
    hpa = run_trace(SHORT_BURST, controller("hpa", policy, PROFILE), PROFILE, policy)
    assert ours.both_attained >= hpa.both_attained + 0.05, (ours, hpa)
    assert ours.gpu_hours <= hpa.gpu_hours * 1.05
    assert ours.reasons.get("ScaledUp", 0) >= 1 and ours.reasons.get("ScaledDown", 0) >= 1


def test_traces_have_their_shapes():
    bursty = TRACES["bursty"]
    assert bursty.rate(0) == 4 and bursty.rate(650) == 16
    shifting = TRACES["shifting"]
    assert [shifting.kind(t) for t in (0, 1000, 2000, 3000)] == [
        "chat", "prefill-heavy", "decode-heavy", "prefill-heavy",
    ]  # fmt: skip
    reqs = shifting.requests(0)
    heavy = [r for r in reqs if 900 <= r.arrival < 1800]
    assert min(r.prompt for r in heavy) >= 1500 and max(r.output for r in heavy) <= 40


def test_cli_writes_results(tmp_path, capsys):
    rc = main(["bench", "autoscale", "--traces", "steady", "--controllers", "decide",
               "--out", str(tmp_path)])  # fmt: skip
    assert rc == 0
    doc = json.loads((tmp_path / "results.json").read_text())
    (result,) = doc["results"]
    assert result["trace"] == "steady" and result["unfinished"] == 0
    assert "| steady | decide |" in (tmp_path / "table.md").read_text()
    assert main(["bench", "autoscale", "--traces", "nope"]) == 2
    assert "unknown trace" in capsys.readouterr().err
