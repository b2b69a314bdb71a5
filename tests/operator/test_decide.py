"""Table-driven tests of the pure decision function: one scenario per row, replicas asserted.

Scenarios build observations from a few numbers (latency percentiles become one-bucket
histograms), run `decide` over a sequence of evaluations feeding each decision back as history
(as the operator and the simulation do), and check the replicas and the reason a user sees.
"""

from __future__ import annotations

import pytest

from lamina_operator.api import AutoscalingPolicySpec
from lamina_operator.autoscaling import (
    HistoryEntry,
    Observation,
    PodSample,
    PoolObservation,
    RouterSample,
    decide,
)
from lamina_operator.autoscaling.observation import quantile


def hist(seconds: float, n: int = 100):
    """n observations in a narrow bucket ending at `seconds`: every percentile is ~`seconds`."""
    return ((seconds * 0.999, 0.0), (seconds, float(n)), (float("inf"), float(n)))


def policy(**kw) -> AutoscalingPolicySpec:
    base = {
        "ttft": {"percentile": 90, "targetMilliseconds": 500},
        "tbt": {"percentile": 90, "targetMilliseconds": 50},
        "prefill": {"minReplicas": 1, "maxReplicas": 16},
        "decode": {"minReplicas": 1, "maxReplicas": 16},
        "prefillToDecodeRatio": {"minPercent": 10, "maxPercent": 1000},
        "warmupSeconds": 60,
    }
    base.update(kw)
    return AutoscalingPolicySpec.model_validate(base)


def prefill(n, ttft=0.46, queued=0.0, rate=1000.0, starting=0, age=600.0, gpus=1, desired=None):
    pods = tuple(
        PodSample(f"p{i}", age, ttft=hist(ttft), queued_prefill_tokens=queued / max(n, 1),
                  prefill_tokens_per_second=rate / max(n, 1))
        for i in range(n)
    )  # fmt: skip
    return PoolObservation(
        desired if desired is not None else n + starting, n, starting, gpus, pods
    )


def decode(n, tbt=0.02, kv=0.5, waiting=0.0, starting=0, age=600.0, gpus=1, desired=None):
    pods = tuple(
        PodSample(f"d{i}", age, tbt=hist(tbt), kv_utilization=kv, running=10,
                  waiting_requests=waiting / max(n, 1))
        for i in range(n)
    )  # fmt: skip
    return PoolObservation(
        desired if desired is not None else n + starting, n, starting, gpus, pods
    )


def obs(now, p, d, **kw) -> Observation:
    return Observation(now=now, pools={"prefill": p, "decode": d}, **kw)


def run(pol, observations):
    """Decide each observation in turn with the previous decisions as history."""
    history: list[HistoryEntry] = []
    out = []
    for o in observations:
        dec = decide(pol, o, history)
        history.append(dec.history_entry(applied=pol.mode == "active"))
        out.append(dec)
    return out


def test_quantile_matches_prometheus_interpolation():
    h = ((0.1, 50.0), (0.2, 100.0), (float("inf"), 100.0))
    assert quantile(0.5, h) == pytest.approx(0.1)
    assert quantile(0.75, h) == pytest.approx(0.15)
    assert quantile(0.99, ((0.1, 0.0), (float("inf"), 10.0))) == 0.1  # +inf: highest bound
    assert quantile(0.9, ()) is None


# (name, policy overrides, observation, expected {pool: replicas}, expected reason)
SINGLE = [
    ("burst: TTFT 2x target doubles prefill", {}, obs(0, prefill(2, ttft=1.0), decode(2)),
     {"prefill": 4, "decode": 2}, "ScaledUp"),
    ("burst bigger than maxStep", {}, obs(0, prefill(2, ttft=5.0), decode(2)),
     {"prefill": 6, "decode": 2}, "ScaledUp"),
    ("within tolerance: TTFT 1.05x", {}, obs(0, prefill(2, ttft=0.5), decode(2, kv=0.85)),
     {"prefill": 2, "decode": 2}, "WithinTolerance"),
    ("decode TBT over target", {}, obs(0, prefill(2), decode(3, tbt=0.1)),
     {"prefill": 2, "decode": 6}, "ScaledUp"),
    ("decode KV demand with waiting requests", {},
     obs(0, prefill(2), decode(2, kv=0.8, waiting=20)), {"prefill": 2, "decode": 4}, "ScaledUp"),
    ("prefill backlog charged from the router", {},
     obs(0, prefill(2), decode(2), router=RouterSample(queued_prefill_tokens=1000)),
     {"prefill": 6, "decode": 2}, "ScaledUp"),
    ("at max replicas", {"prefill": {"minReplicas": 1, "maxReplicas": 2}},
     obs(0, prefill(2, ttft=2.0), decode(2)), {"prefill": 2, "decode": 2}, "AtMaxReplicas"),
    ("raised to minReplicas", {"decode": {"minReplicas": 3, "maxReplicas": 8}},
     obs(0, prefill(2), decode(2, kv=0.85)), {"prefill": 2, "decode": 3}, "ScaledUp"),
    ("cold-start samples ignored", {}, obs(0, prefill(2, ttft=2.0, age=10), decode(2)),
     {"prefill": 2, "decode": 2}, "WithinTolerance"),
    ("the same samples from warm pods count", {}, obs(0, prefill(2, ttft=2.0, age=61), decode(2)),
     {"prefill": 6, "decode": 2}, "ScaledUp"),
    ("starting pods credited: latency waits for them", {},
     obs(0, prefill(2, ttft=2.0, starting=4), decode(2)), {"prefill": 6, "decode": 2},
     "StartingPods"),
    ("decode TBT acts while pods start, credited against the replicas asked for", {},
     obs(0, prefill(2), decode(2, tbt=0.15, starting=2)), {"prefill": 2, "decode": 6},
     "ScaledUp"),
    ("decode TBT while pods start, covered by them", {},
     obs(0, prefill(2), decode(2, tbt=0.07, starting=2)), {"prefill": 2, "decode": 4},
     "StartingPods"),
    ("the largest recommendation wins, not the largest ratio", {},
     obs(0, prefill(2), PoolObservation(4, 4, 0, 1, tuple(
         PodSample(f"d{i}", age, tbt=hist(0.075), kv_utilization=1.0, running=10)
         for i, age in enumerate((600.0, 600.0, 30.0, 30.0))))),
     {"prefill": 2, "decode": 5}, "ScaledUp"),
    ("starting pods credited: backlog sized on all pods", {},
     obs(0, prefill(2, queued=1000, rate=2000, starting=2), decode(2)),
     {"prefill": 4, "decode": 2}, "StartingPods"),
    ("ratio min raises prefill", {"prefillToDecodeRatio": {"minPercent": 50, "maxPercent": 200}},
     obs(0, prefill(2), decode(4, tbt=0.1)), {"prefill": 4, "decode": 8}, "ScaledUp"),
    ("ratio max raises decode", {"prefillToDecodeRatio": {"minPercent": 10, "maxPercent": 100}},
     obs(0, prefill(2, ttft=1.5), decode(2)), {"prefill": 6, "decode": 6}, "ScaledUp"),
    ("ratio max with decode at its max lowers prefill",
     {"prefillToDecodeRatio": {"minPercent": 10, "maxPercent": 100},
      "decode": {"minReplicas": 1, "maxReplicas": 3}},
     obs(0, prefill(2, ttft=1.5), decode(2)), {"prefill": 3, "decode": 3}, "ScaledUp"),
    ("budget binds: replicas shift to prefill (furthest from SLO)", {"gpuBudget": 8},
     obs(0, prefill(2, ttft=2.0), decode(6, kv=0.75)), {"prefill": 4, "decode": 4}, "Rebalanced"),
    ("budget counts GPUs per replica", {"gpuBudget": 8},
     obs(0, prefill(2, ttft=2.0, gpus=2), decode(2, gpus=1)), {"prefill": 3, "decode": 2},
     "ScaledUp"),
    ("keepGpuTotal fills the budget by pressure", {"gpuBudget": 6, "keepGpuTotal": True},
     obs(0, prefill(2, ttft=0.45), decode(2, kv=0.7)), {"prefill": 3, "decode": 3}, "ScaledUp"),
    ("metrics unavailable holds", {},
     obs(0, prefill(2, ttft=2.0), decode(2), metrics_error="connection refused"),
     {"prefill": 2, "decode": 2}, "MetricsUnavailable"),
    ("prefill scaled to zero wakes on queued work", {"prefill": {"minReplicas": 0,
     "maxReplicas": 4}}, obs(0, prefill(0, queued=500), decode(2)), {"prefill": 1, "decode": 2},
     "ScaledUp"),
]  # fmt: skip


@pytest.mark.parametrize(
    "name,overrides,observation,want,reason", SINGLE, ids=[row[0] for row in SINGLE]
)
def test_single_decision(name, overrides, observation, want, reason):
    dec = decide(policy(**overrides), observation, [])
    assert dec.desired() == want, dec.message()
    assert dec.reason == reason, dec.message()


def test_decision_explains_inputs_and_clamps():
    dec = decide(policy(gpuBudget=8), obs(0, prefill(2, ttft=2.0), decode(6, kv=0.75)), [])
    text = dec.message()
    assert "ttft=" in text and "kv=" in text and "budget: decode 6->4" in text
    assert "gpus 8->8/8" in text
    assert dec.pools["prefill"].recommended == 8  # what the signals wanted before the clamps
    assert any(c.startswith("maxStep") for c in dec.pools["prefill"].clamps)


def test_scale_down_takes_highest_recommendation_over_window():
    # Demand falls to a third; the recommendation made at t=0 (6 pods) stays in the 300 s window.
    pol = policy(scaleDown={"stabilizationWindowSeconds": 300, "maxStep": 10})
    history, got, reasons, replicas = [], [], [], 6
    for t, demand in [(0, 0.8 * 6), (100, 0.25 * 6), (200, 0.25 * 6), (301, 0.25 * 6),
                      (401, 0.25 * 6)]:  # fmt: skip
        d = decide(pol, obs(t, prefill(2), decode(replicas, kv=demand / replicas)), history)
        history.append(d.history_entry(applied=True))
        replicas = d.pools["decode"].desired
        got.append(replicas)
        reasons.append(d.reason)
    # 3, not 2: KV alone would allow ceil(6 * 0.25 / 0.8) = 2, but TBT (0.02 s of 0.05) is
    # projected linearly onto fewer pods, ceil(6 * 0.4) = 3. AIBrix's minimum-over-window would
    # have given [6, 3, 3, 3, 3].
    assert got == [6, 6, 6, 3, 3]
    assert reasons[1] == "Stabilizing" and reasons[3] == "ScaledDown"


def test_noisy_metrics_do_not_flap():
    # KV utilisation alternates 0.45 / 0.95 around a 0.8 target every 15 s for 10 minutes.
    pol = policy()
    replicas, seq = 4, []
    decisions, history = [], []
    for i in range(40):
        kv = (0.95 if i % 2 else 0.45) * 4 / replicas  # the same demand spread over the pods
        o = obs(15 * i, prefill(2), decode(replicas, kv=kv))
        d = decide(pol, o, history)
        history.append(d.history_entry(applied=True))
        replicas = d.pools["decode"].desired
        decisions.append(d)
        seq.append(replicas)
    changes = sum(1 for a, b in zip(seq, seq[1:]) if a != b)
    assert changes <= 1  # at most the one scale-up the 0.95 peaks justify, never back down
    assert min(seq) >= 4


def test_slow_drift_scales_one_step_at_a_time():
    pol = policy()
    replicas, history, seq = 4, [], []
    for i in range(30):  # KV utilisation drifts from 0.60 up by 0.01 per evaluation
        kv = (0.6 + 0.01 * i) * 4 / replicas
        d = decide(pol, obs(15 * i, prefill(2), decode(replicas, kv=kv)), history)
        history.append(d.history_entry(applied=True))
        replicas = d.pools["decode"].desired
        seq.append(replicas)
    first_up = seq.index(5)
    assert (
        0.6 + 0.01 * first_up > 0.8 * 1.1
    )  # demand per pod of the first 4 pods  # nothing before the tolerance band is crossed
    assert all(b - a <= 1 for a, b in zip(seq, seq[1:]))


def test_scale_up_window_takes_lowest_recommendation():
    pol = policy(scaleUp={"stabilizationWindowSeconds": 60, "maxStep": 10})
    decisions = run(pol, [obs(0, prefill(2), decode(2)), obs(15, prefill(2), decode(2, tbt=0.2))])
    assert decisions[1].pools["decode"].desired == 2  # the window still holds a "2"
    assert decisions[1].pools["decode"].clamps == ("scaleUp window: 8->2",)


def test_manual_edit_yield_holds_then_resumes():
    pol = policy(manualChange={"action": "yield", "holdSeconds": 600})
    seq = [obs(0, prefill(2), decode(4)),  # autoscaler leaves 4
           obs(15, prefill(2), decode(7)),  # someone scaled decode to 7
           obs(300, prefill(2), decode(7, kv=0.2)),  # idle, but the hold is on
           obs(700, prefill(2), decode(7, kv=0.2))]  # fmt: skip
    d = run(pol, seq)
    assert d[1].manual_changes == ("decode",) and d[1].reason == "ManualChangeYielded"
    assert d[1].pools["decode"].desired == 7 and d[1].pools["decode"].held
    assert d[2].pools["decode"].desired == 7 and d[2].reason == "ManualChangeHeld"
    assert d[2].manual_changes == ()  # reported once, not on every evaluation
    assert d[3].pools["decode"].desired == 6  # hold over: autoscaling resumes from 7
    assert not d[3].pools["decode"].held


def test_manual_edit_reclaim_restores_once():
    pol = policy(manualChange={"action": "reclaim"})
    d = run(pol, [obs(0, prefill(2), decode(4, kv=0.75)), obs(15, prefill(2), decode(9, kv=0.75)),
                  obs(30, prefill(2), decode(4, kv=0.75))])  # fmt: skip
    assert d[1].manual_changes == ("decode",) and d[1].reason == "ManualChangeReclaimed"
    assert d[1].pools["decode"].desired == 4 and d[1].apply
    assert d[2].manual_changes == () and d[2].reason == "WithinTolerance"


def test_advisory_mode_decides_but_applies_nothing():
    pol = policy(mode="advisory")
    d = run(
        pol, [obs(0, prefill(2, ttft=2.0), decode(2)), obs(15, prefill(2, ttft=2.0), decode(9))]
    )
    assert d[0].pools["prefill"].desired == 6 and not d[0].apply
    assert d[0].message().startswith("advisory")
    assert d[0].history_entry(applied=False).applied is None
    assert d[1].manual_changes == ()  # nothing was applied, so nothing can be overridden


def test_burst_then_quiet_returns_to_baseline():
    pol = policy()
    p, history, seq = 2, [], []
    for t in range(0, 1500, 15):
        hot = 100 <= t < 250
        ready = p  # pods become ready at once in this table (the simulation models start-up)
        o = obs(t, prefill(ready, ttft=1.5 if hot else 0.1, rate=ready * 900.0), decode(2))
        d = decide(pol, o, history)
        history.append(d.history_entry(applied=True))
        p = d.pools["prefill"].desired
        seq.append(p)
    assert max(seq) > 2
    assert seq[-1] < max(seq)  # it comes back down after the burst, one step per window


@pytest.mark.parametrize(
    "spec,needle",
    [
        ({"keepGpuTotal": True}, "keepGpuTotal is true but gpuBudget is not set"),
        ({"mode": "dry-run"}, "mode"),
        ({"manualChange": {"action": "fight"}}, "action"),
        ({"metrics": {"prometheusUrl": "prometheus:9090"}}, "prometheusUrl"),
        ({"tolerancePercent": 101}, "tolerancePercent"),
        ({"targetKvUtilizationPercent": 0}, "targetKvUtilizationPercent"),
        ({"historyLimit": 0}, "historyLimit"),
    ],
)
def test_new_policy_fields_are_validated(spec, needle):
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as err:
        AutoscalingPolicySpec.model_validate(spec)
    text = str(err.value)
    assert needle in text or needle in str(err.value.errors()[0]["loc"]).replace("_", "")


def test_backlog_target_follows_ttft_or_its_own_field():
    assert policy().backlog_target_seconds == 0.25
    assert policy(targetPrefillBacklogMilliseconds=800).backlog_target_seconds == 0.8
    assert AutoscalingPolicySpec().backlog_target_seconds == 1.0


def test_latency_that_is_service_time_does_not_scale():
    # Long prompts take 1 s to compute on an idle pod: TTFT 1 s against 0.5 s is the service
    # time itself (nothing waits, pods 20% busy), so more pods would not help.
    last = HistoryEntry(0, {"prefill": 2, "decode": 2}, {"prefill": 2, "decode": 2},
                        prefill_capacity=2400.0, prefill_queued=0.0)  # fmt: skip
    idle = obs(15, prefill(2, ttft=1.0, rate=960.0), decode(2, kv=0.75))
    d = decide(policy(), idle, [last])
    assert d.pools["prefill"].desired == 2
    assert "(not load-bound)" in d.message()
    busy = obs(15, prefill(2, ttft=1.0, rate=4000.0), decode(2, kv=0.75))
    assert decide(policy(), busy, [last]).pools["prefill"].desired > 2


def test_learned_capacity_sizes_prefill_from_arrivals():
    # 2400 tok/s per pod was seen saturated; prompts arrive at 4000 tok/s computed + 1000 tok/s
    # of growing backlog (15000 tokens in 15 s): utilisation 5000 / 4800 of the 2 pods.
    last = HistoryEntry(0, {"prefill": 2, "decode": 2}, {"prefill": 2, "decode": 2},
                        prefill_capacity=2400.0, prefill_queued=0.0)  # fmt: skip
    o = obs(15, prefill(2, ttft=0.3, rate=4000.0, queued=15_000.0), decode(2, kv=0.75))
    d = decide(policy(), o, [last])
    util = next(s for s in d.pools["prefill"].signals if s.name == "utilization")
    assert util.value == pytest.approx(5000 / 4800)
    # the backlog (15000 tokens = 3.1 s of 2 pods) asks for 25; maxStep 4 allows 6
    assert d.pools["prefill"].recommended == 25 and d.pools["prefill"].desired == 6


def test_prefill_capacity_is_measured_from_busy_time():
    # 2 warm pods computed 600 tok/s each while busy 25% of the interval: 2400 tok/s busy.
    pods = tuple(
        PodSample(f"p{i}", 600.0, ttft=hist(0.46), prefill_tokens_per_second=600.0,
                  busy_fraction=0.25)
        for i in range(2)
    )  # fmt: skip
    o = obs(0, PoolObservation(2, 2, 0, 1, pods), decode(2, kv=0.75))
    d = decide(policy(), o, [])
    assert d.prefill_capacity == pytest.approx(2400.0)
    util = next(s for s in d.pools["prefill"].signals if s.name == "utilization")
    assert util.value == pytest.approx(0.25)  # 1200 tok/s of 2 x 2400


def _decode_demand(phases, until, policy_spec=None):
    """Decode demand in pods' worth (at the KV target) per phase start; pods ready at once.
    Returns {time: (replicas after the decision, learned scale-down window)}."""
    pol = policy_spec or policy()
    replicas, history, out = 2, [], {}
    for t in range(0, until, 15):
        demand = [d for start, d in phases if start <= t][-1]
        o = obs(t, prefill(2), decode(replicas, tbt=0.005, kv=0.8 * demand / replicas))
        d = decide(pol, o, history)
        history.append(d.history_entry(applied=True))
        replicas = d.pools["decode"].desired
        out[t] = (replicas, d.scale_down_seconds["decode"])
    return out


# (name, [(phase start s, demand in pods)], time checked, replicas then, window then (s))
LEARNED_WINDOW = [
    # 6 pods needed until 45 s, scaled down to 2 after the 300 s window, needed again at 900 s:
    # the window grows to 1.25 x (900 - 45) and holds the 6 pods through the next lull.
    ("demand back after a scale-down: the window covers the lull",
     [(0, 6), (60, 2), (900, 6), (1000, 2)], 1800, 6, 1.25 * 855),
    # the last 6 was recommended at 990 s: down from 990 + 1069 s, one pod per evaluation
    ("the learned window ends too: down after 1069 s without demand",
     [(0, 6), (60, 2), (900, 6), (1000, 2)], 2250, 2, 1.25 * 855),
    ("a lull shorter than the window taught nothing (no scale-down in it)",
     [(0, 6), (60, 2), (300, 6), (400, 2)], 1200, 2, 300),
    ("a first burst teaches nothing", [(0, 2), (600, 6), (700, 2)], 1200, 2, 300),
]  # fmt: skip


@pytest.mark.parametrize("name,phases,at,replicas,window", LEARNED_WINDOW,
                         ids=[row[0] for row in LEARNED_WINDOW])  # fmt: skip
def test_scale_down_window_learned_from_returning_demand(name, phases, at, replicas, window):
    got = _decode_demand(phases, at + 15)
    assert got[at][0] == replicas, got
    assert got[at][1] == pytest.approx(window)


def test_learned_window_is_explained_and_capped():
    got = []
    pol = policy()
    replicas, history = 2, []
    # 6 pods at 0 s, a lull scaled down, back at 3000 s: 1.25 x 2955 s is capped at an hour
    for t in range(0, 3100, 15):
        demand = 6 if t < 60 or t >= 3000 else 2
        o = obs(t, prefill(2), decode(replicas, tbt=0.005, kv=0.8 * demand / replicas))
        d = decide(pol, o, history)
        history.append(d.history_entry(applied=True))
        replicas = d.pools["decode"].desired
        got.append(d)
    grown = next(d for d in got if d.scale_down_seconds["decode"] > 300)
    assert grown.time == 3000 and grown.scale_down_seconds["decode"] == 3600
    assert "scaleDown window learned: 300s->3600s (demand back after 2955s)" in grown.message()


def _prompts(ttft: float, prompts_per_pod: int, tokens_per_second: float):
    return tuple(
        PodSample(f"p{i}", 600.0, ttft=hist(ttft, prompts_per_pod),
                  prefill_tokens_per_second=tokens_per_second, busy_fraction=None)
        for i in range(2)
    )  # fmt: skip


# Two prefill pods each computing 1800 tok/s of a 2400 tok/s capacity (75% busy), TTFT p90
# 1.2 s against 0.5 s, over the 15 s evaluation interval:
# (name, prompts per pod, seconds since the last history entry, prefill replicas after)
SERVICE_BOUND = [
    # 12 prompts of 2250 tokens: 0.94 s each on an idle pod; the TTFT target is out of reach,
    # utilisation 0.75 of 0.7 is within tolerance: no scale-up (before: 2 -> 5 on TTFT)
    ("long prompts: TTFT is their compute time, not acted on", 12, 15, 2),
    # 117 prompts of 230 tokens: 0.1 s each; the 1.2 s are waiting: TTFT scales prefill
    ("chat prompts: TTFT is waiting, acted on", 117, 15, 5),
    # the rates cover the evaluation interval, not the time since the last recorded decision
    # (600 s after an operator restart): the prompts are still 230 tokens
    ("chat prompts after a gap in the history (operator restart)", 117, 600, 5),
]  # fmt: skip


@pytest.mark.parametrize(
    "name,prompts,since,want", SERVICE_BOUND, ids=[r[0] for r in SERVICE_BOUND]
)
def test_ttft_of_prompts_longer_than_the_target_is_not_acted_on(name, prompts, since, want):
    last = HistoryEntry(0, {"prefill": 2, "decode": 2}, {"prefill": 2, "decode": 2},
                        prefill_capacity=2400.0, prefill_queued=0.0)  # fmt: skip
    pods = PoolObservation(2, 2, 0, 1, _prompts(1.2, prompts, 1800.0))
    o = obs(since, pods, decode(2, kv=0.75))
    d = decide(policy(), o, [last])
    assert d.pools["prefill"].desired == want, d.message()
    ttft = next(s for s in d.pools["prefill"].signals if s.name == "ttft")
    assert ttft.actionable == (want > 2)


def _forecast_obs(now, *, arrivals=6.0, mean_output=450.0, decoding=1400.0, tbt=0.045, n=4,
                  starting=0, finished=2.0, running=10):  # fmt: skip
    """Prefill pods finished `arrivals` prompts/s over the 15 s interval; decode pods finished
    `finished` requests/s of `mean_output` tokens and decode `decoding` tokens/s in all."""
    prompts = arrivals * 15
    pre = tuple(
        PodSample(f"p{i}", 600.0, ttft=hist(0.3, n=int(prompts / 2)),
                  prefill_tokens_per_second=500.0)
        for i in range(2)
    )  # fmt: skip
    dec = tuple(
        PodSample(f"d{i}", 600.0, tbt=hist(tbt), kv_utilization=0.3, running=running,
                  decode_tokens_per_second=decoding / n, finished_per_second=finished / n,
                  finished_output_tokens_per_second=finished * mean_output / n)
        for i in range(n)
    )  # fmt: skip
    return obs(now, PoolObservation(2, 2, 0, 1, pre), PoolObservation(n + starting, n, starting,
                                                                      1, dec))  # fmt: skip


def _forecast_history(capacity=500.0, decode_replicas=4):
    return [HistoryEntry(0, {"prefill": 2, "decode": decode_replicas},
                         {"prefill": 2, "decode": decode_replicas},
                         prefill_capacity=2400.0, prefill_queued=0.0,
                         decode_capacity=capacity)]  # fmt: skip


def test_decode_demand_forecast_sizes_decode_ahead_of_the_batch():
    # Long outputs begin: 6 req/s x 450 tokens = 2700 tokens/s will be asked of decode, which
    # decodes 1400 now (the batch is still building up) and whose TBT is within tolerance. At
    # 500 tokens/s per pod at the TBT target that is 5.4 pods: 6.
    d = decide(policy(), _forecast_obs(15), _forecast_history())
    demand = next(s for s in d.pools["decode"].signals if s.name == "demand")
    assert demand.value == pytest.approx(2700 / (500 * 4))
    assert d.pools["decode"].desired == 6 and d.reason == "ScaledUp"
    assert "demand 6 req/s x 450 tokens = 2700 tokens/s at 500/pod" in d.message()
    assert d.decode_capacity == 500.0
    # Pods already on their way are counted: with 2 starting the 6 asked for cover it.
    d = decide(policy(), _forecast_obs(15, starting=2), _forecast_history(decode_replicas=6))
    assert d.pools["decode"].desired == 6


@pytest.mark.parametrize(
    "name, kw, capacity",
    [
        ("the batch already is the demand: tbt and kv size the pool", {"decoding": 2600.0}, 500.0),
        ("no request finished: no mean output", {"finished": 0.0}, 500.0),
        ("no per-pod rate at the target measured yet", {}, None),
    ],
)
def test_decode_demand_forecast_not_used(name, kw, capacity):
    d = decide(policy(), _forecast_obs(15, **kw), _forecast_history(capacity))
    assert all(s.name != "demand" for s in d.pools["decode"].signals), name
    assert d.pools["decode"].desired == 4, name


def test_decode_demand_forecast_ignored_while_every_request_is_served_as_it_comes():
    # One unbatched request per pod, nothing waiting: a demand the arrival window puts above
    # what the pods decode (and above the rate learned at the target) does not scale decode up.
    o = _forecast_obs(15, running=1)
    assert all(p.running == 1 for p in o.pools["decode"].pods)
    d = decide(policy(), o, _forecast_history())
    assert all(s.name != "demand" for s in d.pools["decode"].signals)
    assert d.pools["decode"].desired <= 4


def test_decode_demand_forecast_only_raises():
    # A demand the pool covers easily does not hold it up: TBT and KV alone size it down.
    o = _forecast_obs(15, arrivals=1.0, mean_output=100.0, decoding=50.0, tbt=0.02)
    d = decide(policy(), o, _forecast_history())
    assert any(s.name == "demand" for s in d.pools["decode"].signals)
    assert d.pools["decode"].recommended < 4


@pytest.mark.parametrize(
    "name, tbt, rate, previous, want",
    [
        ("TBT at the target: its rate is the capacity", 0.048, 520.0, None, 520.0),
        ("the most seen at the target is kept", 0.048, 450.0, 520.0, 520.0),
        ("a lightly loaded pod's rate says nothing", 0.03, 300.0, None, None),
        ("over the target: not a rate within it", 0.06, 700.0, 520.0, 520.0),
    ],
)
def test_decode_capacity_is_learned_at_the_tbt_target(name, tbt, rate, previous, want):
    o = _forecast_obs(15, decoding=rate * 4, tbt=tbt)
    d = decide(policy(), o, _forecast_history(previous))
    assert d.decode_capacity == want, name


def test_learned_window_kept_through_evaluations_that_compute_none():
    # Metrics unavailable, or a pool held for a manual change: the window learned before stays
    # in the decision (status records it; a restarted operator reads it back).
    last = HistoryEntry(0, {"prefill": 2, "decode": 4}, {"prefill": 2, "decode": 4},
                        scale_down_seconds={"prefill": 300.0, "decode": 1069.0})  # fmt: skip
    broken = decide(policy(), obs(15, prefill(2), decode(4), metrics_error="x"), [last])
    assert broken.scale_down_seconds == {"prefill": 300.0, "decode": 1069.0}
    manual = decide(policy(), obs(15, prefill(2), decode(6)), [last])  # someone set decode to 6
    assert manual.pools["decode"].held and manual.scale_down_seconds["decode"] == 1069.0
