"""The autoscaler's timer logic against the in-memory API server, with each pod's /metrics a
real HTTP server on a free loopback port serving Prometheus text (prometheus_client), so
scraping, parsing, rates and histogram deltas run for real."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest

from lamina_operator import metrics
from lamina_operator.autoscaling.autoscaler import Autoscaler
from lamina_operator.constants import API_VERSION, DEPLOYMENT_LABEL, POLICY_KIND, ROLE_LABEL

from .conftest import NS
from .metrics_endpoints import Clock, EnginePod, FakePrometheus

SD = (API_VERSION, "ServingDeployment", NS)


@pytest.fixture
def pods():
    made = {
        "prefill": [EnginePod("prefill") for _ in range(2)],
        "decode": [EnginePod("decode") for _ in range(3)],
        "router": [EnginePod("router")],
    }
    yield made  # fmt: skip
    for group in made.values():
        for pod in group:
            pod.stop()


@pytest.fixture
def world(cluster, reconciler, sd_factory, gpu_spec, pods):
    """The GPU example reconciled, its pools all ready, one Pod object per fake endpoint."""
    sd_factory("qwen", gpu_spec)
    assert reconciler.reconcile(cluster.get(*SD, "qwen")).problems == []
    for role, group in pods.items():
        dep = cluster.get("apps/v1", "Deployment", NS, f"qwen-{role}")
        n = dep["spec"]["replicas"]
        cluster.set_status("apps/v1", "Deployment", NS, f"qwen-{role}",
                           {"replicas": n, "readyReplicas": n})  # fmt: skip
        for i, pod in enumerate(group):
            add_pod(cluster, f"qwen-{role}-{i}", role, pod.port)
    return cluster


def add_pod(cluster, name, role, port, ready_since="2026-01-01T00:00:00Z"):
    cluster.create({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS,
                     "labels": {DEPLOYMENT_LABEL: "qwen", ROLE_LABEL: role}},
        "spec": {"containers": [{"name": "engine", "ports": [{"containerPort": port}]}]},
        "status": {"podIP": "127.0.0.1", "conditions": [
            {"type": "Ready", "status": "True", "lastTransitionTime": ready_since}]},
    })  # fmt: skip


def replicas(cluster, role):
    return cluster.get("apps/v1", "Deployment", NS, f"qwen-{role}")["spec"]["replicas"]


def autoscaling_status(cluster):
    return cluster.get(*SD, "qwen")["status"]["autoscaling"]


def cond(status, kind):
    return next(c for c in status["conditions"] if c["type"] == kind)


def gauge(metric, *labels):
    return metric.labels(*labels)._value.get()


def slow_decode(pods, tbt=0.1):
    for pod in pods["decode"]:
        pod.load(tbt=tbt, running=20, kv=0.5, tokens=1000)
    for pod in pods["prefill"]:
        pod.load(ttft=0.2, n=20, tokens=4000)


def test_tbt_over_target_scales_decode_and_explains_it(world, pods, recorder):
    clock = Clock()
    auto = Autoscaler(world, recorder, clock)
    first = auto.evaluate(NS, "qwen")  # first scrape: gauges only, no latency deltas yet
    assert first is not None and not first.changed
    assert auto.evaluate(NS, "qwen") is None  # not due: 15 s have not passed
    slow_decode(pods)
    clock.now += 15
    decision = auto.evaluate(NS, "qwen")
    assert decision.reason == "ScaledUp"
    assert replicas(world, "decode") == 6  # ceil(3 * 0.1 / 0.05), within maxStep 4
    assert replicas(world, "prefill") == 2
    status = autoscaling_status(world)
    last = status["decisions"][-1]
    assert last["reason"] == "ScaledUp" and last["applied"] is True
    assert {p["name"]: (p["before"], p["after"]) for p in last["pools"]} == {
        "prefill": (2, 2), "decode": (3, 6)}  # fmt: skip
    assert "tbt=0.095/0.05" in last["message"]  # p90 interpolated in the (0.05, 0.1] bucket
    assert cond(status, "ScalingActive")["reason"] == "Active"
    assert ("Normal", "ScaledUp") in [(t, r) for t, r, _ in recorder.events]
    assert gauge(metrics.autoscaler_desired_replicas, NS, "qwen", "decode") == 6
    assert gauge(metrics.autoscaler_current_replicas, NS, "qwen", "decode") == 3
    assert gauge(metrics.autoscaler_gpus, NS, "qwen") == 8
    assert gauge(metrics.autoscaler_gpu_budget, NS, "qwen") == 24
    sd = world.get(*SD, "qwen")["status"]
    assert sd["lastScalingDecision"]["decodeReplicas"] == 6


def test_changed_shared_policy_applies_without_restart(world, pods, recorder):
    clock = Clock()
    auto = Autoscaler(world, recorder, clock)
    auto.evaluate(NS, "qwen")
    world.patch(API_VERSION, POLICY_KIND, NS, "latency-slo", {"spec": {"mode": "advisory"}})
    slow_decode(pods)
    clock.now += 15
    decision = auto.evaluate(NS, "qwen")
    assert decision.pools["decode"].desired == 6 and not decision.apply
    assert replicas(world, "decode") == 3  # advisory: reported, not applied
    status = autoscaling_status(world)
    assert status["mode"] == "advisory" and status["decisions"][-1]["applied"] is False
    assert cond(status, "ScalingActive")["reason"] == "Advisory"
    events = len(recorder.events)
    slow_decode(pods)
    clock.now += 15
    auto.evaluate(NS, "qwen")
    assert len(recorder.events) == events  # the same advice is not posted again


def test_manual_scale_is_reported_and_yielded_to(world, pods, recorder):
    clock = Clock()
    auto = Autoscaler(world, recorder, clock)
    auto.evaluate(NS, "qwen")
    world.patch(
        "apps/v1", "Deployment", NS, "qwen-decode", {"spec": {"replicas": 5}}
    )  # kubectl scale
    slow_decode(pods, tbt=0.02)
    clock.now += 15
    decision = auto.evaluate(NS, "qwen")
    assert decision.reason == "ManualChangeYielded" and replicas(world, "decode") == 5
    warnings = [m for t, r, m in recorder.events if r == "ManualScaleDetected"]
    assert warnings and "decode replicas were changed to 5" in warnings[0]
    status = autoscaling_status(world)
    assert cond(status, "ManualChange")["reason"] == "Yielding"
    assert "decode" in status["manualSince"]
    # a restarted operator rebuilds the hold from status and keeps yielding
    again = Autoscaler(world, recorder, clock)
    clock.now += 15
    assert again.evaluate(NS, "qwen").pools["decode"].held


def test_unreachable_pod_holds_and_counts_an_error(world, pods, recorder):
    clock = Clock()
    auto = Autoscaler(world, recorder, clock)
    auto.evaluate(NS, "qwen")
    before = gauge(metrics.autoscaler_metrics_errors_total, NS, "qwen")
    pods["decode"][0].stop()
    clock.now += 15
    decision = auto.evaluate(NS, "qwen")
    assert decision.reason == "MetricsUnavailable" and not decision.changed
    assert gauge(metrics.autoscaler_metrics_errors_total, NS, "qwen") == before + 1
    status = autoscaling_status(world)
    assert cond(status, "ScalingActive")["reason"] == "MetricsUnavailable"
    assert "qwen-decode-0" in cond(status, "ScalingActive")["message"]


def test_no_autoscaling_means_no_evaluation(cluster, reconciler, sd_factory, minimal_spec):
    sd_factory("plain", minimal_spec)
    reconciler.reconcile(cluster.get(*SD, "plain"))
    assert Autoscaler(cluster, reconciler.recorder, Clock()).evaluate(NS, "plain") is None


def test_prometheus_source(world, pods, recorder):
    prom = FakePrometheus([f"qwen-decode-{i}" for i in range(3)])
    try:
        world.patch(API_VERSION, POLICY_KIND, NS, "latency-slo",
                    {"spec": {"metrics": {"prometheusUrl": prom.url}}})  # fmt: skip
        decision = Autoscaler(world, recorder, Clock()).evaluate(NS, "qwen")
    finally:
        prom.stop()
    assert decision.pools["decode"].desired == 6  # p90 TBT ~0.095 s from the increase() buckets
    assert any('namespace="serving"' in q and "[15s]" in q for q in prom.queries)


def test_reconcile_keeps_and_reports_the_autoscaled_replicas(world, pods, recorder, reconciler):
    clock = Clock()
    auto = Autoscaler(world, recorder, clock)
    auto.evaluate(NS, "qwen")
    slow_decode(pods)
    clock.now += 15
    auto.evaluate(NS, "qwen")
    outcome = reconciler.reconcile(world.get(*SD, "qwen"))
    assert replicas(world, "decode") == 6  # not reverted to spec.decode.replicas (3)
    pools = {p["name"]: p for p in outcome.status["pools"]}
    assert pools["decode"]["desiredReplicas"] == 6


def test_scale_in_marks_the_least_busy_pods_for_deletion(world, pods, recorder):
    world.patch(API_VERSION, POLICY_KIND, NS, "latency-slo",
                {"spec": {"scaleDown": {"stabilizationWindowSeconds": 0, "maxStep": 1}}})  # fmt: skip
    for pod, running in zip(pods["decode"], (9, 2, 5)):
        pod.load(running=running, kv=0.1)
    decision = Autoscaler(world, recorder, Clock()).evaluate(NS, "qwen")
    # KV 0.1 of 0.8 on 3 pods: down, one step; the first scrape has no latencies yet
    assert decision.reason == "ScaledDown" and replicas(world, "decode") == 2, decision.message()
    costs = {
        f"qwen-decode-{i}": world.get("v1", "Pod", NS, f"qwen-decode-{i}")["metadata"]
        ["annotations"]["controller.kubernetes.io/pod-deletion-cost"]
        for i in range(3)
    }  # fmt: skip
    assert costs == {"qwen-decode-0": "9", "qwen-decode-1": "2", "qwen-decode-2": "5"}


def test_scrape_turns_totals_into_rates_deltas_and_waiting_tokens():
    from lamina_operator.autoscaling.scrape import PodTarget, parse, sample

    pod = EnginePod("prefill")
    try:
        target = PodTarget("p", "uid-p", "unused", 100.0)
        pod.load(ttft=0.2, n=10, tokens=2000)  # 10 prompts of 200 tokens so far
        first = parse(generate_latest(pod.registry).decode(), now=0.0)
        pod.load(ttft=0.3, n=5, tokens=1000)
        pod.queue.labels("prefill").set(4)
        second = parse(generate_latest(pod.registry).decode(), now=10.0)
    finally:
        pod.stop()
    s = sample(target, second, first)
    assert s.prefill_tokens_per_second == pytest.approx(100.0)
    assert s.ttft[-1][1] == 5  # only the last interval's observations
    assert dict(s.ttft)[0.5] == 5 and dict(s.ttft)[0.25] == 0
    assert s.queued_prefill_tokens == pytest.approx(4 * 200)  # waiting x mean prompt
    restarted = sample(target, first, second)  # totals went down: a restarted process
    assert restarted.ttft[-1][1] == 10  # counted from zero, not negative


def test_scrape_reads_finished_requests_and_their_output_tokens():
    # The decode forecast's mean output: finished requests and their output tokens per second,
    # from the engine's lamina_request_generation_tokens histogram (_count and _sum).
    from lamina_operator.autoscaling.scrape import PodTarget, parse, sample

    pod = EnginePod("decode")
    try:
        target = PodTarget("d", "uid-d", "unused", 100.0)
        pod.finish(100, 300)
        first = parse(generate_latest(pod.registry).decode(), now=0.0)
        pod.finish(400, 500, 600)
        second = parse(generate_latest(pod.registry).decode(), now=10.0)
    finally:
        pod.stop()
    s = sample(target, second, first)
    assert s.finished_per_second == pytest.approx(0.3)  # 3 requests in 10 s
    assert s.finished_output_tokens_per_second == pytest.approx(150.0)  # 1500 tokens in 10 s
    assert sample(target, first, None).finished_per_second == 0.0  # one scrape: no rate yet


def test_prometheus_reads_finished_requests_and_their_output_tokens():
    from lamina_operator.autoscaling.scrape import PodTarget, PrometheusReader

    prom = FakePrometheus(["qwen-decode-0"])
    try:
        reader = PrometheusReader(prom.url, 5)
        (s,) = reader.read(NS, [PodTarget("qwen-decode-0", "u", "unused", 100.0)], 15)
    finally:
        prom.stop()
    assert s.finished_per_second == 2.0 and s.finished_output_tokens_per_second == 900.0
    assert any("rate(lamina_request_generation_tokens_sum{" in q and "[15s]" in q
               for q in prom.queries)  # fmt: skip


def test_each_deployment_keeps_its_own_scrapes(
    world, pods, recorder, reconciler, sd_factory, gpu_spec
):
    # A second deployment (pools, no pods) must not make the first forget its last scrapes.
    sd_factory("other", gpu_spec)
    reconciler.reconcile(world.get(*SD, "other"))
    clock = Clock()
    auto = Autoscaler(world, recorder, clock)
    auto.evaluate(NS, "qwen")
    assert auto.evaluate(NS, "other") is not None
    slow_decode(pods)
    clock.now += 15
    assert auto.evaluate(NS, "qwen").pools["decode"].desired == 6


def test_status_written_is_valid_against_the_crd_schema(world, pods, recorder):
    # What the API server would check on the status subresource (the in-memory one does not).
    from .test_crds import _schema, _validate

    clock = Clock()
    auto = Autoscaler(world, recorder, clock)
    auto.evaluate(NS, "qwen")
    world.patch("apps/v1", "Deployment", NS, "qwen-decode", {"spec": {"replicas": 5}})
    slow_decode(pods)
    clock.now += 15
    auto.evaluate(NS, "qwen")  # a manual change: conditions, manualSince, a decision record
    status = world.get(*SD, "qwen")["status"]
    assert status["autoscaling"]["decisions"] and status["autoscaling"]["manualSince"]
    schema = _schema("lamina.dev_servingdeployments.yaml")["properties"]["status"]
    _validate(schema, status)


def test_learned_scale_down_window_survives_an_operator_restart(world, pods, recorder):
    # Decode needed 3 pods, was scaled down to 1 in a lull, and needed more again 300 s later:
    # the scale-down window grows from the policy's 30 s to 1.25 x the lull. An operator
    # restarted then (a new Autoscaler, its history rebuilt from status) keeps the window.
    world.patch(API_VERSION, POLICY_KIND, NS, "latency-slo",
                {"spec": {"scaleDown": {"stabilizationWindowSeconds": 30}}})  # fmt: skip
    clock = Clock()
    auto = Autoscaler(world, recorder, clock)

    def decode_at(kv, seconds):
        """kv on every decode pod (no TBT samples: the KV signal alone) for `seconds`."""
        for pod in pods["decode"]:
            pod.load(running=10, kv=kv)
        decision = None
        for _ in range(seconds // 15):
            decision = auto.evaluate(NS, "qwen")
            clock.now += 15
        return decision

    decode_at(0.8, 30)  # 3 pods at their KV target
    assert decode_at(0.1, 300).pools["decode"].desired == 1  # the lull: down one by one
    back = decode_at(1.6, 15)  # twice the target on 1 pod: 2 pods
    assert back.pools["decode"].desired == 2
    learned = back.scale_down_seconds["decode"]
    assert learned > 300, back.message()
    assert autoscaling_status(world)["scaleDownWindowSeconds"] == {"decode": int(learned)}

    auto = Autoscaler(world, recorder, clock)  # the operator restarts
    held = decode_at(0.1, 60)  # quiet again: past the policy's 30 s, within the learned window
    assert held.pools["decode"].desired == 2 and held.reason == "Stabilizing", held.message()
    assert held.scale_down_seconds["decode"] == int(learned)
    assert "scaleDown window: 1->2" in held.message()
