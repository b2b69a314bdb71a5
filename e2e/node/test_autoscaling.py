"""The operator's autoscaler on a real node: load scales decode up, a drained scale-in brings it
back down with no failed request, a hand-made replica change is reported.

The chart's operator (autoscaling runs in it) and manifests/demo.yaml's ServingDeployment with an
inline policy: a 5 s interval, a 15 s scale-down window, a 20 ms p90 TBT target the CPU demo
model misses with 12 requests on one decode pod, decode between 1 and 2 pods, prefill fixed at 1. Tests run in file
order on one ServingDeployment. docs/autoscaling.md ("On a real node") has the numbers.
"""

# ruff: noqa: F811  (admin and chart are test_fullstack's fixtures, used here as arguments)
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import openai
import pytest
from kube import Kubectl, condition, wait_for
from load import run_load
from test_fullstack import (  # noqa: F401  (admin, chart: this module's own fixtures)
    NS,
    PROMPT,
    SD,
    _pod_ready,
    admin,
    chart,
    demo_docs,
    ready,
    router_polling,
    router_url,
)

NAME = "demo-autoscale"
RUN = Path(os.environ.get("LAMINA_NODE_RUN", "/nonexistent"))
REPORT = Path(os.environ.get("LAMINA_NODE_AUTOSCALING_OUT", RUN / "autoscaling.json"))
HEAVY_TOKENS, LIGHT_TOKENS = 64, 32
POLICY = {
    # The demo model's CPU decode step: p90 15 ms at batch 1, 33-70 ms at batch 8 on this 2-core
    # machine while other builds ran, but 10-26 ms on an idle one with 8 in flight of 32 tokens
    # (requests spend much of their life in prefill and the KV hop, so fewer run at once): the
    # heavy load is 12 in flight of 64 tokens. TBT counts only while decode batches (2+
    # requests running per pod); 1 in flight does not batch, so TBT does not count.
    "tbt": {"percentile": 90, "targetMilliseconds": 20},
    "prefill": {"minReplicas": 1, "maxReplicas": 1},
    "decode": {"minReplicas": 1, "maxReplicas": 2},
    "warmupSeconds": 0,
    "evaluationIntervalSeconds": 5,
    "scaleUp": {"stabilizationWindowSeconds": 0, "maxStep": 1},
    "scaleDown": {"stabilizationWindowSeconds": 15, "maxStep": 1},
    "manualChange": {"action": "yield", "holdSeconds": 600},
    "drain": {"timeoutSeconds": 60},
    "historyLimit": 30,
}
numbers: dict = {}


def kube(admin: Kubectl) -> Kubectl:
    return admin.in_namespace(NS)


@pytest.fixture(scope="module")
def scaled(admin: Kubectl, chart) -> dict:
    admin.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
    (doc,) = [d for d in demo_docs() if d["kind"] == "ServingDeployment"]
    doc["metadata"]["name"] = NAME
    doc["spec"]["autoscaling"] = {"policy": POLICY}
    kube(admin).apply(doc)
    obj = wait_for(f"{NAME} Ready=True", lambda: ready(admin, NAME), 900)
    router_polling(admin, NAME, prefill=1, decode=1)
    yield obj
    REPORT.write_text(json.dumps(numbers, indent=2))
    print(json.dumps(numbers))
    admin.run("delete", "namespace", NS, "--ignore-not-found", "--wait=false", check=False)
    wait_for(f"namespace {NS} gone", lambda: admin.get("namespace", NS) is None, 180)


@pytest.fixture(scope="module")
def expected(admin: Kubectl, scaled: dict) -> dict[int, str]:
    """Greedy completions of PROMPT, by max_tokens: what every request of the load must get."""
    client = openai.OpenAI(base_url=router_url(admin, NAME), api_key="none", max_retries=5)
    return {
        n: client.completions.create(
            model="lamina-demo", prompt=PROMPT, max_tokens=n, temperature=0.0
        )
        .choices[0]
        .text  # fmt: skip
        for n in (HEAVY_TOKENS, LIGHT_TOKENS)
    }


def autoscaling(admin: Kubectl) -> dict:
    return (kube(admin).get(SD, NAME).get("status") or {}).get("autoscaling") or {}


def decode_pods(admin: Kubectl) -> list[dict]:
    select = f"lamina.dev/deployment={NAME},lamina.dev/role=decode"
    return kube(admin).list("pods", "-l", select)


def decode_replicas(admin: Kubectl) -> int:
    return kube(admin).get("deployments", f"{NAME}-decode")["spec"]["replicas"]


def events(admin: Kubectl) -> list[dict]:
    """`kubectl get events` of the ServingDeployment, oldest first."""
    evs = kube(admin).events_for("ServingDeployment", NAME)
    return sorted(evs, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")


def reasons(admin: Kubectl) -> list[str]:
    return [e["reason"] for e in events(admin)]


def decode_moves(status: dict) -> list[tuple[str, int, int]]:
    """(reason, before, after) of each recorded decision that moved the decode pool."""
    out = []
    for d in status.get("decisions") or []:
        (pool,) = [p for p in d["pools"] if p["name"] == "decode"]
        if pool["before"] != pool["after"]:
            out.append((d["reason"], pool["before"], pool["after"]))
    return out


def test_load_scales_decode_up(admin: Kubectl, expected: dict[int, str]) -> None:
    """12 requests in flight: decode batches, misses the TBT target, goes 1 -> 2 (ScaledUp
    decision in status and as an Event), and the new pod becomes Ready under the load."""
    assert decode_replicas(admin) == 1
    t0 = time.monotonic()

    def until_two_ready(progress) -> None:
        wait_for("a decision scaling decode 1 -> 2",
                 lambda: ("ScaledUp", 1, 2) in decode_moves(autoscaling(admin)), 180, 1.0)  # fmt: skip
        numbers["scale_up_decided_s"] = round(time.monotonic() - t0, 1)
        wait_for("2 ready decode pods",
                 lambda: len([p for p in decode_pods(admin) if _pod_ready(p)]) == 2, 180, 1.0)  # fmt: skip
        numbers["scale_up_ready_s"] = round(time.monotonic() - t0, 1)
        router_polling(admin, NAME, decode=2)

    result = run_load(router_url(admin, NAME), "lamina-demo", PROMPT, expected[HEAVY_TOKENS],
                      requests=40, concurrency=12, max_tokens=HEAVY_TOKENS,
                      during=until_two_ready)  # fmt: skip
    numbers["heavy"] = {"requests": result.requests, "ok_first_try": result.ok_first_try,
                        "ok_after_retry": result.ok_after_retry, "failed": result.failed,
                        "seconds": round(result.seconds, 1)}  # fmt: skip
    assert not result.failed, numbers["heavy"]
    status = autoscaling(admin)
    numbers["decode_moves_under_load"] = decode_moves(status)
    up = [d for d in status["decisions"] if ("ScaledUp", 1, 2) in decode_moves({"decisions": [d]})][
        0
    ]
    assert "tbt=" in up["message"] and up["applied"], up
    assert condition({"status": status}, "ScalingActive")["reason"] == "Active", status
    ev = [e for e in events(admin) if e["reason"] == "ScaledUp"]
    assert ev and "decode 1->2" in ev[-1]["message"], ev
    numbers["scale_up_message"] = up["message"]


def test_quiet_scales_decode_down_through_a_drain(admin: Kubectl, expected: dict[int, str]) -> None:
    """1 in flight (the router alternates the pods; no batching, KV use low; 2 in flight on the
    pod left batch and miss 20 ms, scaling up again): after the 15 s scale-down window
    decode goes 2 -> 1 by draining one pod (status.autoscaling.drains, DrainStarted, Drained:
    the ReplicaSet removes that pod), and the light load across it sees no failure and no
    retry."""
    seen: list[dict] = []
    t0 = time.monotonic()

    def until_drained(progress) -> None:
        def done() -> bool:
            status = autoscaling(admin)
            for d in status.get("drains") or []:
                if (d["pod"], d["stage"]) not in {(s["pod"], s["stage"]) for s in seen}:
                    seen.append(dict(d, seen_s=round(time.monotonic() - t0, 1)))
            live = [p for p in decode_pods(admin) if not p["metadata"].get("deletionTimestamp")]
            return ("Drained" in reasons(admin) and not status.get("drains")
                    and decode_replicas(admin) == 1 and len(live) == 1)  # fmt: skip

        try:
            wait_for("decode drained down to 1 pod", done, 240, 1.0)
        except AssertionError as exc:  # say what the autoscaler decided, not only that it timed out
            raise AssertionError(f"{exc}; {where_scale_in_stands(admin, seen)}") from None
        numbers["scale_in_s"] = round(time.monotonic() - t0, 1)

    result = run_load(router_url(admin, NAME), "lamina-demo", PROMPT, expected[LIGHT_TOKENS],
                      requests=10, concurrency=1, max_tokens=LIGHT_TOKENS,
                      during=until_drained)  # fmt: skip
    numbers["light"] = {"requests": result.requests, "ok_first_try": result.ok_first_try,
                        "ok_after_retry": result.ok_after_retry,
                        "retries": dict(result.retry_reasons), "failed": result.failed,
                        "seconds": round(result.seconds, 1)}  # fmt: skip
    numbers["drains_seen"] = seen
    numbers["light"]["retry_examples"] = result.retry_examples
    for role in ("router", "decode"):
        logs = kube(admin).run("logs", "-l", f"lamina.dev/deployment={NAME},lamina.dev/role={role}",
                               "--tail=400", "--prefix", check=False)  # fmt: skip
        (RUN / f"autoscaling-{role}.log").write_text(logs)
    assert not result.failed, numbers["light"]
    assert result.ok_first_try == result.requests, numbers["light"]
    assert any(d["pool"] == "decode" and d["stage"] == "Draining" for d in seen), seen
    got = reasons(admin)
    assert "DrainStarted" in got and got.index("DrainStarted") < got.index("Drained"), got
    assert not {"DrainTimedOut", "DrainUnavailable", "DrainCancelled"} & set(got), got
    drained = [e for e in events(admin) if e["reason"] == "Drained"][-1]
    assert seen[0]["pod"] in drained["message"], (drained, seen)
    assert ("ScaledDown", 2, 1) in decode_moves(autoscaling(admin)), autoscaling(admin)
    # the drained pod is the one the ReplicaSet removed (gone, or terminating)
    left = {p["metadata"]["name"]: p for p in decode_pods(admin)}
    assert seen[0]["pod"] not in left or left[seen[0]["pod"]]["metadata"].get("deletionTimestamp")


def where_scale_in_stands(admin: Kubectl, seen: list[dict]) -> str:
    """The operator's last decisions, its drains, the pods and the events: a failed scale-in
    says why (a TBT that never stayed under target, a drain that never ended, ...)."""
    status = autoscaling(admin)
    decisions = [{k: d.get(k) for k in ("time", "reason", "message", "applied")}
                 for d in (status.get("decisions") or [])[-8:]]  # fmt: skip
    pods = [(p["metadata"]["name"], bool(p["metadata"].get("deletionTimestamp")))
            for p in decode_pods(admin)]  # fmt: skip
    return json.dumps({"decisions": decisions, "drains": status.get("drains"), "drains_seen": seen,
                       "decode_replicas": decode_replicas(admin), "decode_pods": pods,
                       "events": reasons(admin)[-12:]}, default=str)  # fmt: skip


def test_hand_patched_replicas_are_reported_and_left_alone(admin: Kubectl, scaled: dict) -> None:
    """`kubectl patch` of spec.decode.replicas (1 -> 2) while the autoscaler holds decode at 1:
    a Warning ManualScaleDetected Event, the ManualChange condition Yielding, and decode kept at
    2 (manualChange yield) through several evaluations with no load."""
    t0 = time.monotonic()
    kube(admin).run("patch", SD, NAME, "--type=merge", "-p", '{"spec":{"decode":{"replicas":2}}}')

    def reported() -> dict | None:
        status = autoscaling(admin)
        cond = condition({"status": status}, "ManualChange")
        return status if cond and cond["reason"] == "Yielding" else None

    status = wait_for("the ManualChange condition Yielding", reported, 90, 1.0)
    numbers["manual_reported_s"] = round(time.monotonic() - t0, 1)
    assert "decode" in status["manualSince"], status
    assert status["decisions"][-1]["reason"] == "ManualChangeYielded", status["decisions"][-1]
    (ev,) = [e for e in events(admin) if e["reason"] == "ManualScaleDetected"]
    assert ev["type"] == "Warning" and "decode replicas were changed to 2" in ev["message"], ev
    time.sleep(20)  # four evaluations, past the 15 s scale-down window: yield keeps 2
    assert decode_replicas(admin) == 2
    assert [e["reason"] for e in events(admin)].count("ManualScaleDetected") == 1
    numbers["events"] = [
        f"{e.get('type')} {e['reason']}: {e['message'][:200]}" for e in events(admin)
    ]
