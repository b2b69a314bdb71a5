"""Health, drain, metrics, client disconnects, and the router's backend list and draining."""

from __future__ import annotations

import time

import httpx
import pytest

BODY = {"model": "tiny-moe", "prompt": "Hello there", "max_tokens": 4, "temperature": 0}


def test_metrics_names(unified):
    httpx.post(f"{unified.url}/v1/completions", json=BODY, timeout=30).raise_for_status()
    text = httpx.get(f"{unified.url}/metrics", timeout=5).text
    for name in (
        "lamina_request_ttft_seconds_count", "lamina_request_tbt_seconds_bucket",
        "lamina_request_e2e_seconds_sum", "lamina_queue_depth", "lamina_running_batch_size",
        "lamina_kv_cache_utilization", "lamina_prefill_tokens_total",
        "lamina_expert_weight_bytes_total", "lamina_kv_fallback_total",
    ):  # fmt: skip
        assert name in text, name
    ttft = [ln for ln in text.splitlines() if ln.startswith("lamina_request_ttft_seconds_count")]
    assert float(ttft[0].split()[-1]) >= 1


def test_client_disconnect_aborts_the_request(unified, wait_for):
    engine = unified.server.async_engine
    body = dict(BODY, max_tokens=400, stream=True, ignore_eos=True)
    with httpx.stream("POST", f"{unified.url}/v1/completions", json=body, timeout=30) as r:
        assert r.status_code == 200
        next(r.iter_lines())  # a first token arrived; now hang up
    wait_for(lambda: not engine.engine.has_unfinished() and engine.num_in_flight == 0)
    aborted = unified.server.metrics.requests.labels("unified", "abort")._value.get()
    assert aborted >= 1


def test_drain_refuses_new_work_and_fails_health(start, tiny_model):
    srv = start(role="unified", model=str(tiny_model), served_model_name="tiny-moe")
    assert httpx.get(f"{srv.url}/health").status_code == 200
    assert httpx.post(f"{srv.internal_url}/v1/admin/drain").json()["draining"] is True
    health = httpx.get(f"{srv.url}/health")
    assert health.status_code == 503 and health.json()["error"]["message"] == "draining"
    r = httpx.post(f"{srv.url}/v1/completions", json=BODY, timeout=10)
    assert r.status_code == 503 and "draining" in r.json()["error"]["message"]


def test_router_backends_from_file_and_draining_backend(start, tiny_model, tmp_path, wait_for):
    a = start(role="unified", model=str(tiny_model))
    b = start(role="unified", model=str(tiny_model))
    listing = tmp_path / "backends"
    listing.write_text(f"{a.address}\n")
    router = start(role="router", model=str(tiny_model), decode_service=f"file:{listing}",
                   backend_poll_seconds=0.1, wait_ready=False)  # fmt: skip
    wait_for(lambda: httpx.get(f"{router.url}/health").status_code == 200)
    listing.write_text(f"{a.address}\n{b.address}\n")  # the operator adds b
    wait_for(lambda: httpx.get(f"{router.url}/health").json().get("unified") == 2)
    httpx.post(f"{a.internal_url}/v1/admin/drain")
    wait_for(lambda: httpx.get(f"{router.url}/health").json().get("unified") == 1)

    def served(srv) -> float:
        return srv.server.metrics.requests.labels("unified", "length")._value.get()

    before_a, before_b = served(a), served(b)
    for _ in range(4):
        r = httpx.post(f"{router.url}/v1/completions", json=BODY, timeout=30)
        assert r.status_code == 200, r.text
    assert served(a) == before_a and served(b) == before_b + 4


def test_router_without_backends_is_not_ready(start, tiny_model):
    router = start(role="router", model=str(tiny_model), decode_service="127.0.0.1:9",
                   backend_poll_seconds=0.1, wait_ready=False)  # fmt: skip
    time.sleep(0.3)
    r = httpx.get(f"{router.url}/health")
    assert r.status_code == 503 and "need a decode or a unified pod" in r.json()["error"]["message"]
    r = httpx.post(f"{router.url}/v1/completions", json=dict(BODY, model="tiny-moe"), timeout=10)
    assert r.status_code == 503


def test_router_with_decode_pods_and_no_prefill_pod_stays_ready(start, tiny_model, redis_server):
    """The prefill pool empty (crashed, rolling, scaled to zero) is a degraded router, not a
    down one: its readiness holding keeps it in the Service, and decode pods compute prompts."""
    decode = start(role="decode", model=str(tiny_model), kv_redis_url=redis_server.url)
    router = start(role="router", model=str(tiny_model), decode_service=decode.address,
                   prefill_service="127.0.0.1:9", backend_poll_seconds=0.1)  # fmt: skip
    health = httpx.get(f"{router.url}/health", timeout=10)
    assert health.status_code == 200, health.text
    assert health.json()["decode"] == 1 and health.json()["prefill"] == 0
    assert "no prefill pod ready" in health.json()["degraded"]
    r = httpx.post(f"{router.url}/v1/completions", json=dict(BODY, model="tiny-moe"), timeout=60)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("bad", [{"max_tokens": 0}, {"temperature": -1}, {"prompt": []}])
def test_invalid_parameters_are_400(unified, bad):
    r = httpx.post(f"{unified.url}/v1/completions", json={**BODY, **bad}, timeout=10)
    assert r.status_code == 400
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_sigterm_drains_in_flight_streams(start, tiny_model):
    """What Kubernetes does to a pod: SIGTERM mid-stream. The listener closes, the stream in
    flight still runs to its last token, then the server exits."""
    import json
    import signal

    srv = start(role="unified", model=str(tiny_model))
    body = dict(BODY, max_tokens=60, stream=True, ignore_eos=True)
    texts = []
    with httpx.stream("POST", f"{srv.url}/v1/completions", json=body, timeout=60) as r:
        lines = r.iter_lines()
        texts.append(next(lines))
        srv.uv.handle_exit(signal.SIGTERM, None)  # what uvicorn's signal handler calls
        assert srv.server.draining
        texts.extend(lines)
    chunks = [json.loads(t[6:]) for t in texts if t.startswith("data: {")]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    srv.thread.join(20)
    assert not srv.thread.is_alive()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{srv.url}/health", timeout=2)


def test_router_times_streams(stack):
    body = dict(BODY, stream=True, max_tokens=5)
    with httpx.stream("POST", f"{stack.router.url}/v1/completions", json=body, timeout=30) as r:
        assert r.status_code == 200 and r.read().endswith(b"data: [DONE]\n\n")
    text = httpx.get(f"{stack.router.url}/metrics", timeout=5).text
    for name in ("lamina_request_ttft_seconds_count", "lamina_request_e2e_seconds_count"):
        line = next(ln for ln in text.splitlines() if ln.startswith(name + '{role="router"}'))
        assert float(line.split()[-1]) >= 1
    assert 'lamina_router_requests_total{path="disagg",role="router"}' in text
