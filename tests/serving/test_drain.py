"""Issue 10 #3: drain is an admin call on the internal port and can be undone. While draining,
/health is 503 and new requests are refused; requests in flight finish; the state counts them
(in_flight) and the KV transfers still pending (kv_pending)."""

from __future__ import annotations

import json
import threading

import httpx

KEY = "drain-test-key-0123456789"
BODY = {"model": "tiny-moe", "prompt": "Hello there", "max_tokens": 3, "temperature": 0}
LONG = dict(BODY, max_tokens=120, stream=True, ignore_eos=True)


def drain(srv, method: str) -> dict:
    r = httpx.request(method, f"{srv.internal_url}/v1/admin/drain", timeout=30,
                      headers=srv.internal_headers)  # fmt: skip
    assert r.status_code == 200, r.text
    return r.json()


def serving(srv) -> tuple[int, int]:
    """(/health status, a completion's status) on the public port."""
    health = httpx.get(f"{srv.url}/health", timeout=30).status_code
    return health, httpx.post(f"{srv.url}/v1/completions", json=BODY, timeout=60).status_code


def _drain_and_undrain_around_a_stream(srv, wait_for) -> None:
    idle = {"draining": False, "in_flight": 0, "kv_pending": 0}
    assert drain(srv, "GET") == idle and serving(srv) == (200, 200)
    with httpx.stream("POST", f"{srv.url}/v1/completions", json=LONG, timeout=60) as r:
        lines = r.iter_lines()
        next(lines)  # the stream is under way
        assert drain(srv, "POST") == {"draining": True, "in_flight": 1, "kv_pending": 0}
        health = httpx.get(f"{srv.url}/health", timeout=30)
        assert health.status_code == 503 and health.json()["error"]["message"] == "draining"
        live = httpx.get(f"{srv.url}/livez", timeout=30)  # the liveness probe: no restart
        assert live.status_code == 200, live.text
        refused = httpx.post(f"{srv.url}/v1/completions", json=BODY, timeout=60)
        assert refused.status_code == 503 and "draining" in refused.json()["error"]["message"]
        assert drain(srv, "GET")["draining"] is True
        rest = list(lines)  # the request in flight runs to its end
    chunks = [json.loads(t[6:]) for t in rest if t.startswith("data: {")]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert [t for t in rest if t][-1] == "data: [DONE]"
    wait_for(lambda: drain(srv, "GET")["in_flight"] == 0)
    assert drain(srv, "DELETE") == idle
    assert serving(srv) == (200, 200)


def test_engine_drain_is_reversible(start, tiny_model, wait_for):
    srv = start(role="unified", model=str(tiny_model), internal_key=KEY)
    _drain_and_undrain_around_a_stream(srv, wait_for)


def test_router_drain_is_reversible(start, tiny_model, wait_for):
    pod = start(role="unified", model=str(tiny_model), internal_key=KEY)
    router = start(role="router", model=str(tiny_model), decode_service=pod.address,
                   backend_poll_seconds=0.1, internal_key=KEY)  # fmt: skip
    _drain_and_undrain_around_a_stream(router, wait_for)
    assert drain(pod, "GET")["draining"] is False  # the router's drain is its own


def test_kv_pending_counts_transfers(start, tiny_model, redis_server, wait_for):
    """A prefill pod's shipped KV is pending until the decode pod has read it; a decode pod's
    load is pending while it waits for the KV."""
    common = dict(model=str(tiny_model), kv_backend="redis", kv_redis_url=redis_server.url,
                  kv_wait_seconds=30.0, deployment="drain")  # fmt: skip
    prefill, decode = start(role="prefill", **common), start(role="decode", **common)
    request = dict(BODY, kv_transfer={"request_id": "drain-shipped"})
    assert prefill.post_internal("/v1/internal/prefill", request).status_code == 200
    assert drain(prefill, "GET") == {"draining": False, "in_flight": 0, "kv_pending": 1}
    assert decode.generate(request).status_code == 200  # reads the KV, then deletes it
    assert drain(prefill, "GET")["kv_pending"] == 0

    waiting = dict(BODY, kv_transfer={"request_id": "drain-never-shipped"})
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(decode.generate(waiting).status_code))
    thread.start()
    wait_for(lambda: drain(decode, "GET")["kv_pending"] == 1)
    assert drain(decode, "GET")["in_flight"] == 1
    # the router's notice that the prefill failed: the decode pod recomputes at once
    r = httpx.post(f"{decode.internal_url}/v1/internal/kv_abort", timeout=30,
                   json={"request_id": "drain-never-shipped"})  # fmt: skip
    assert r.json()["waiting"] is True
    thread.join(30)
    assert result == [200]
    assert drain(decode, "GET") == {"draining": False, "in_flight": 0, "kv_pending": 0}


def test_router_sends_elsewhere_what_a_pod_refuses_while_draining(start, tiny_model):
    """A pod drained between two of the router's polls answers 503 to what the router still
    sends it; the router gives that request to another pod instead of passing the 503 on
    (lamina_router_retries_total{reason="unavailable"}). Polls are an hour apart here, so the
    router cannot have learned of the drain any other way."""
    a = start(role="unified", model=str(tiny_model), internal_key=KEY)
    b = start(role="unified", model=str(tiny_model), internal_key=KEY)
    router = start(role="router", model=str(tiny_model), internal_key=KEY,
                   decode_service=f"{a.address},{b.address}", backend_poll_seconds=3600,
                   decode_picker="round-robin")  # fmt: skip
    drain(a, "POST")
    answers = [httpx.post(f"{router.url}/v1/completions", json=BODY, timeout=60) for _ in range(4)]
    streamed = httpx.post(f"{router.url}/v1/completions", json=dict(BODY, stream=True), timeout=60)
    assert [r.status_code for r in answers] == [200] * 4, [r.text for r in answers]
    assert streamed.status_code == 200 and streamed.text.rstrip().endswith("data: [DONE]")
    metrics = httpx.get(f"{router.url}/metrics", timeout=30).text
    assert 'lamina_router_retries_total{reason="unavailable",role="router"}' in metrics
    drain(b, "POST")  # nowhere left to go: the client gets the pod's 503, which it may retry
    refused = httpx.post(f"{router.url}/v1/completions", json=BODY, timeout=60)
    assert refused.status_code == 503 and "draining" in refused.json()["error"]["message"]
