"""The drained scale-in's pure steps (autoscaling/drain.py): which pod goes, how many replicas
go at once, and what each look at a drain does, table-driven."""

from __future__ import annotations

import pytest

from lamina_operator.autoscaling.drain import (
    REMOVAL_GRACE_SECONDS,
    Drain,
    DrainReport,
    PodState,
    advance,
    on_demand,
    pick,
    shrink_plan,
)
from lamina_operator.autoscaling.observation import PodSample

T0 = 1_000.0
DRAIN = Drain("decode", "qwen-decode-1", "uid-1", started=T0, replicas=3)
HERE = PodState(True)


def look(drain=DRAIN, *, at=10.0, replicas=3, pod=HERE, report=None, error=None, timeout=45):
    return advance(drain, now=T0 + at, timeout=timeout, deployment_replicas=replicas, pod=pod,
                   report=report, error=error)  # fmt: skip


def test_pick_takes_the_least_busy_pod_then_the_least_kv():
    pods = [
        PodSample("a", 100, running=4, waiting_requests=1, kv_utilization=0.1),
        PodSample("b", 100, running=2, waiting_requests=0, kv_utilization=0.6),
        PodSample("c", 100, running=1, waiting_requests=1, kv_utilization=0.3),
    ]
    assert pick(pods).name == "c"  # 2 requests, less KV than b
    assert pick([]) is None


@pytest.mark.parametrize(
    "current, desired, starting, plan",
    [
        (3, 2, 0, (0, True)),  # one ready pod drains
        (3, 2, 1, (1, False)),  # the starting pod goes at once, nothing to drain
        (5, 2, 1, (1, True)),  # the starting pod at once, one more drained now
        (3, 3, 0, (0, False)),
        (2, 4, 0, (0, False)),
    ],
)
def test_shrink_plan(current, desired, starting, plan):
    assert shrink_plan(current, desired, starting) == plan


@pytest.mark.parametrize(
    "kwargs, action, reason",
    [
        (dict(report=DrainReport(True, 2, 0)), "wait", ""),
        (dict(report=DrainReport(True, 0, 1)), "wait", ""),  # KV still being read
        (dict(report=DrainReport(True, 0, 0)), "remove", "Drained"),
        # work done, but the kubelet still says Ready: lowering the replicas now could make a
        # ReplicaSet without pod-deletion-cost (< 1.22) remove another, serving pod
        (dict(report=DrainReport(True, 0, 0), pod=PodState(True, ready=True)), "wait", ""),
        (
            dict(report=DrainReport(True, 0, 0), pod=PodState(True, ready=True), at=45),
            "remove",
            "DrainTimedOut",
        ),
        (dict(report=DrainReport(True, 3, 0), at=45), "remove", "DrainTimedOut"),
        (dict(error="connection refused"), "wait", ""),  # patient until the timeout
        (dict(error="connection refused", at=50), "remove", "DrainTimedOut"),
        (dict(report=DrainReport(False, 0, 0)), "redrain", "DrainRestarted"),
        (dict(pod=PodState(False)), "remove", "DrainPodGone"),
        (dict(pod=PodState(True, terminating=True)), "remove", "DrainPodGone"),
        (dict(replicas=5, report=DrainReport(True, 0, 0)), "cancel", "DrainCancelled"),
    ],
)
def test_each_look_at_a_draining_pod(kwargs, action, reason):
    step = look(**kwargs)
    assert (step.action, step.reason) == (action, reason), step.message


def test_a_look_keeps_the_counts_and_the_messages_say_why():
    step = look(report=DrainReport(True, 2, 1))
    assert (step.drain.in_flight, step.drain.kv_pending) == (2, 1)
    timed_out = look(step.drain, at=60, error="timed out")
    assert timed_out.warning and "unreachable (timed out)" in timed_out.message
    assert "replicas 3->2" in timed_out.message
    done = look(report=DrainReport(True, 0, 0))
    assert not done.warning and done.message.startswith("qwen-decode-1 drained in 10s")


def test_removing_waits_for_the_replicaset_then_undrains_a_pod_it_kept():
    removing = Drain("decode", "p", "u", T0, 3, stage="Removing", removing_since=T0)
    assert look(removing, replicas=2).action == "wait"
    assert look(removing, replicas=2, pod=PodState(True, terminating=True)).action == "done"
    assert look(removing, replicas=2, pod=PodState(False)).action == "done"
    kept = look(removing, replicas=2, at=REMOVAL_GRACE_SECONDS)
    assert (kept.action, kept.reason, kept.warning) == ("cancel", "DrainedPodKept", True)
    assert look(removing, replicas=4).reason == "DrainCancelled"  # scaled by someone else


def test_effective_replicas_leave_the_drained_pod_out():
    assert DRAIN.effective == 2


def test_demand_rising_cancels_a_drain_and_more_scale_in_waits_for_it():
    assert on_demand(DRAIN, 2) is None  # what the drain gives: it goes on
    assert on_demand(DRAIN, 1) is None  # more scale-in: one drain at a time
    step = on_demand(DRAIN, 3)
    assert (step.action, step.reason) == ("cancel", "DrainCancelled")
    assert "decode wants 3, 2 without qwen-decode-1" in step.message
    removing = Drain("decode", "p", "u", T0, 3, stage="Removing", removing_since=T0)
    assert on_demand(removing, 3).action == "cancel"  # replicas go back up: it serves again


def test_drain_timeout_is_bounded_and_outlasts_the_liveness_probe():
    """A draining engine stays live (/livez), so drains may outlast the liveness probe's
    minute; ten minutes is the bound."""
    from pydantic import ValidationError

    from lamina_operator.api import AutoscalingPolicySpec
    from lamina_operator.builders.pods import probes

    assert AutoscalingPolicySpec().drain.timeout_seconds == 120
    assert AutoscalingPolicySpec.model_validate({"drain": {"timeoutSeconds": 600}})
    with pytest.raises(ValidationError, match="drain.timeoutSeconds"):
        AutoscalingPolicySpec.model_validate({"drain": {"timeoutSeconds": 601}})
    live = probes(600)["livenessProbe"]
    assert live["httpGet"]["path"] == "/livez"
    assert live["periodSeconds"] * live["failureThreshold"] < 120


def test_the_timer_keeps_running_while_a_drain_is_recorded():
    # autoscaling removed mid-drain: the timer must run once more to give the pod back
    from lamina_operator.main import _autoscaled

    drain = {"pool": "decode", "pod": "p", "started": "2026-01-01T00:00:00Z", "replicas": 2}
    assert _autoscaled(spec={}, status={"autoscaling": {"drains": [drain]}})
    assert not _autoscaled(spec={}, status={"autoscaling": {"drains": []}})
    assert _autoscaled(spec={"autoscaling": {"enabled": True}}, status={})
