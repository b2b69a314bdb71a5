"""Drained scale-in end to end with real engines: the decode pool is two `lamina serve --role
unified` processes (the built-in demo model, CPU) on free loopback ports, each with the
internal key the operator derives; the Kubernetes side is the in-memory API server. The
autoscaler scrapes their /metrics, drains a pod through its internal port, waits for its
requests to finish, then lowers the replicas with that pod's deletion cost the lowest.

The clock is the test's (the drain timeout and the evaluation interval are exact); where a
drain waits for a real request, it moves with real time."""

from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

from lamina_operator.autoscaling.autoscaler import Autoscaler
from lamina_operator.autoscaling.drain import LOWEST_DELETION_COST
from lamina_operator.builders.internal_key import SEED_ENV, derive
from lamina_operator.constants import API_VERSION, DEPLOYMENT_LABEL, POLICY_KIND, ROLE_LABEL

from .conftest import GPU_SPEC, NS, add_sd
from .metrics_endpoints import Clock

pytestmark = pytest.mark.slow  # two engine processes and a real drain: ~50 s on 2 cores

SEED = "s" * 48
SD = (API_VERSION, "ServingDeployment", NS)
# The in-memory API server numbers uids in creation order: the conftest's Secret and policy,
# then this deployment.
SD_UID = "uid-000003"
KEY = derive(SEED.encode(), NS, "qwen", SD_UID)
COST = "controller.kubernetes.io/pod-deletion-cost"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Engine:
    """One `lamina serve --role unified` process: public port (OpenAI API, /metrics, /health)
    and internal port (/v1/admin/drain, the deployment's key)."""

    def __init__(self) -> None:
        self.port, self.internal = _free_port(), _free_port()
        args = [sys.executable, "-m", "lamina_engine.cli", "serve", "--role", "unified",
                "--port", str(self.port), "--internal-port", str(self.internal),
                "--device", "cpu", "--dtype", "float32"]  # fmt: skip
        env = dict(os.environ, LAMINA_INTERNAL_KEY=KEY)
        self.proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)  # fmt: skip
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_healthy(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "lamina serve exited"
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"{self.url} not healthy after {timeout}s")

    def drain_state(self, method: str = "GET") -> dict:
        r = httpx.request(method, f"http://127.0.0.1:{self.internal}/v1/admin/drain",
                          headers={"Authorization": f"Bearer {KEY}"}, timeout=5)  # fmt: skip
        assert r.status_code == 200, r.text
        return r.json()

    def running(self) -> float:
        text = httpx.get(f"{self.url}/metrics", timeout=5).text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("lamina_running_batch_size"))  # fmt: skip

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class Stream:
    """A long streamed completion in a thread; `result` is the text or the error."""

    def __init__(self, engine: Engine, max_tokens: int) -> None:
        self.result: str | Exception | None = None
        body = {"model": "lamina-demo", "prompt": "Once upon a time", "max_tokens": max_tokens,
                "ignore_eos": True, "stream": True, "temperature": 0,
                "stream_options": {"include_usage": True}}  # fmt: skip
        self.thread = threading.Thread(target=self._run, args=(engine.url, body), daemon=True)
        self.thread.start()

    def _run(self, url: str, body: dict) -> None:
        try:
            usage = None
            with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=300) as r:
                r.raise_for_status()
                for line in r.iter_lines():
                    if not line.startswith("data: {"):
                        continue
                    chunk = json.loads(line[len("data: ") :])
                    if "error" in chunk:
                        raise RuntimeError(line)
                    usage = chunk.get("usage") or usage
            self.result = f"{usage['completion_tokens']} tokens"
        except Exception as exc:  # noqa: BLE001 (reported by the test)
            self.result = exc

    def join(self, timeout: float = 300) -> str | Exception | None:
        self.thread.join(timeout)
        return self.result


@pytest.fixture(scope="module")
def engines():
    made = [Engine(), Engine()]
    try:
        for e in made:
            e.wait_healthy()
        yield made
    finally:
        for e in made:
            e.stop()


@pytest.fixture
def world(cluster, reconciler, engines, monkeypatch):
    """Prefill 1 (ready, no pods to measure), decode 2: the two engines; a policy that scales
    decode in as soon as it is idle."""
    monkeypatch.setenv(SEED_ENV, SEED)
    for e in engines:  # a test before may have left one draining
        if e.drain_state()["draining"]:
            e.drain_state("DELETE")
    spec = copy.deepcopy(GPU_SPEC)
    spec["prefill"]["replicas"], spec["decode"]["replicas"], spec["router"]["replicas"] = 1, 2, 1
    sd = add_sd(cluster, "qwen", spec)
    assert sd["metadata"]["uid"] == SD_UID  # the engines were given the key of this uid
    cluster.patch(API_VERSION, POLICY_KIND, NS, "latency-slo", {"spec": {
        "scaleDown": {"stabilizationWindowSeconds": 0, "maxStep": 1},
        "drain": {"timeoutSeconds": 50}}})  # fmt: skip
    assert reconciler.reconcile(cluster.get(*SD, "qwen")).problems == []
    for role in ("prefill", "decode", "router"):
        n = cluster.get("apps/v1", "Deployment", NS, f"qwen-{role}")["spec"]["replicas"]
        cluster.set_status("apps/v1", "Deployment", NS, f"qwen-{role}",
                           {"replicas": n, "readyReplicas": n})  # fmt: skip
    for i, e in enumerate(engines):
        cluster.create({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"qwen-decode-{i}", "namespace": NS,
                         "labels": {DEPLOYMENT_LABEL: "qwen", ROLE_LABEL: "decode"}},
            "spec": {"containers": [{"name": "engine", "ports": [
                {"name": "http", "containerPort": e.port},
                {"name": "internal", "containerPort": e.internal}]}]},
            "status": {"podIP": "127.0.0.1", "conditions": [
                {"type": "Ready", "status": "True",
                 "lastTransitionTime": "2026-01-01T00:00:00Z"}]},
        })  # fmt: skip
    return cluster


def decode_replicas(cluster) -> int:
    return cluster.get("apps/v1", "Deployment", NS, "qwen-decode")["spec"]["replicas"]


def drains(cluster) -> list[dict]:
    return cluster.get(*SD, "qwen")["status"]["autoscaling"].get("drains", [])


def reasons(recorder) -> list[str]:
    return [r for _, r, _ in recorder.events]


def wait_running(engine: Engine, n: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while engine.running() < n:
        assert time.monotonic() < deadline, f"{engine.url} never ran {n} requests"
        time.sleep(0.1)


def kubelet_readiness(cluster, engines) -> None:
    """What the kubelet's readiness probe does: each pod's Ready condition from its /health."""
    for i, e in enumerate(engines):
        ok = httpx.get(f"{e.url}/health", timeout=5).status_code == 200
        cluster.set_status("v1", "Pod", NS, f"qwen-decode-{i}", {"podIP": "127.0.0.1",
            "conditions": [{"type": "Ready", "status": str(ok),
                            "lastTransitionTime": "2026-01-01T00:00:00Z"}]})  # fmt: skip


def test_the_least_busy_pod_drains_its_requests_then_goes(world, engines, recorder):
    busy = [Stream(engines[0], 300), Stream(engines[1], 400), Stream(engines[1], 400)]
    wait_running(engines[0], 1)
    wait_running(engines[1], 2)
    clock = Clock()
    decision = Autoscaler(world, recorder, clock).evaluate(NS, "qwen")
    assert decision.reason == "ScaledDown", decision.message()
    # qwen-decode-0 runs 1 request, qwen-decode-1 runs 2: the first is drained, nothing removed
    [drain] = drains(world)
    assert (drain["pod"], drain["stage"], drain["replicas"]) == ("qwen-decode-0", "Draining", 2)
    assert decode_replicas(world) == 2
    started = next(m for _, r, m in recorder.events if r == "DrainStarted")
    assert "1 requests in flight" in started, started
    assert engines[0].drain_state()["draining"] is True
    assert httpx.get(f"{engines[0].url}/health", timeout=5).status_code == 503
    new = httpx.post(f"{engines[0].url}/v1/completions", timeout=30,
                     json={"model": "lamina-demo", "prompt": "hi", "max_tokens": 2})  # fmt: skip
    assert new.status_code == 503  # no new work while draining
    # an operator restarted mid-drain carries on from status
    auto = Autoscaler(world, recorder, clock)
    looks = 0
    while decode_replicas(world) == 2:  # a look a second, the clock kept to real time
        looks += 1
        assert looks < 50, "the drain never finished"
        if looks == 1:  # the request is still running: the pool keeps both pods
            assert busy[0].thread.is_alive()
        time.sleep(1)
        clock.now += 1
        if not busy[0].thread.is_alive():
            # its work is done, but until the kubelet sees /health fail the pod is Ready, and a
            # ReplicaSet without pod-deletion-cost (< 1.22) could remove another, serving pod
            auto.evaluate(NS, "qwen")
            assert decode_replicas(world) == 2, "replicas lowered while the pod was Ready"
            kubelet_readiness(world, engines)
        auto.evaluate(NS, "qwen")
    # replicas dropped only once qwen-decode-0's request had finished, and it finished whole
    assert busy[0].join(30) == "300 tokens", busy[0].result
    assert "Drained" in reasons(recorder) and "DrainTimedOut" not in reasons(recorder)
    pod0 = world.get("v1", "Pod", NS, "qwen-decode-0")["metadata"]
    assert pod0["annotations"][COST] == LOWEST_DELETION_COST
    assert drains(world)[0]["stage"] == "Removing"
    world.delete("v1", "Pod", NS, "qwen-decode-0")  # what the ReplicaSet does
    clock.now += 5
    auto.evaluate(NS, "qwen")
    assert drains(world) == []
    assert busy[1].join() == "400 tokens" and busy[2].join() == "400 tokens"


def test_demand_rising_undrains_the_pod(world, engines, recorder):
    clock = Clock()
    auto = Autoscaler(world, recorder, clock)
    auto.evaluate(NS, "qwen")
    [drain] = drains(world)  # idle pods: the first by name
    assert drain["pod"] == "qwen-decode-0" and engines[0].drain_state()["draining"]
    world.patch(API_VERSION, POLICY_KIND, NS, "latency-slo",
                {"spec": {"decode": {"minReplicas": 2}}})  # fmt: skip
    clock.now += 15
    decision = auto.evaluate(NS, "qwen")
    assert decision.pools["decode"].desired == 2
    assert "DrainCancelled" in reasons(recorder)
    assert drains(world) == [] and decode_replicas(world) == 2
    assert engines[0].drain_state()["draining"] is False
    assert httpx.get(f"{engines[0].url}/health", timeout=5).status_code == 200


def test_a_drain_past_its_timeout_removes_the_pod_with_a_warning(world, engines, recorder):
    world.patch(API_VERSION, POLICY_KIND, NS, "latency-slo",
                {"spec": {"drain": {"timeoutSeconds": 5}}})  # fmt: skip
    long = [Stream(engines[0], 300), Stream(engines[1], 300), Stream(engines[1], 300)]
    wait_running(engines[0], 1)
    wait_running(engines[1], 2)
    clock = Clock()
    auto = Autoscaler(world, recorder, clock)
    auto.evaluate(NS, "qwen")
    assert drains(world)[0]["pod"] == "qwen-decode-0"
    clock.now += 5
    auto.evaluate(NS, "qwen")
    warning = next((t, m) for t, r, m in recorder.events if r == "DrainTimedOut")
    assert warning[0] == "Warning" and "not drained after 5s" in warning[1], warning
    assert decode_replicas(world) == 1
    for s in long:
        s.join()


def test_a_refused_key_falls_back_to_deletion_cost_with_an_event(world, engines, recorder,
                                                                 monkeypatch):  # fmt: skip
    monkeypatch.setenv(SEED_ENV, "t" * 48)  # not the seed the pods' key came from
    decision = Autoscaler(world, recorder, Clock()).evaluate(NS, "qwen")
    assert decision.reason == "ScaledDown" and decode_replicas(world) == 1
    warning = next((t, m) for t, r, m in recorder.events if r == "DrainUnavailable")
    assert warning[0] == "Warning" and "401" in warning[1], warning
    costs = [world.get("v1", "Pod", NS, f"qwen-decode-{i}")["metadata"]["annotations"][COST]
             for i in range(2)]  # fmt: skip
    assert costs == ["0", "0"]  # idle pods: their in-flight work
    assert drains(world) == []
    assert engines[0].drain_state()["draining"] is False  # never drained


def test_advisory_mode_mid_drain_gives_the_pod_back(world, engines, recorder):
    clock = Clock()
    auto = Autoscaler(world, recorder, clock)
    auto.evaluate(NS, "qwen")
    assert drains(world) and engines[0].drain_state()["draining"]
    world.patch(API_VERSION, POLICY_KIND, NS, "latency-slo", {"spec": {"mode": "advisory"}})
    clock.now += 5  # a tick between evaluations is enough
    auto.evaluate(NS, "qwen")
    cancelled = next(m for _, r, m in recorder.events if r == "DrainCancelled")
    assert "the policy is advisory" in cancelled
    assert drains(world) == [] and decode_replicas(world) == 2
    assert engines[0].drain_state()["draining"] is False


def test_an_operator_without_a_seed_says_so(world, engines, recorder, monkeypatch):
    monkeypatch.delenv(SEED_ENV)
    Autoscaler(world, recorder, Clock()).evaluate(NS, "qwen")
    warning = next(m for _, r, m in recorder.events if r == "DrainUnavailable")
    assert "no LAMINA_OPERATOR_KEY_SEED to derive it from" in warning, warning
    assert decode_replicas(world) == 1 and drains(world) == []
