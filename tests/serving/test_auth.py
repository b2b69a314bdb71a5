"""Issue 10 #3: the public API takes `api_key`, the internal endpoints live on their own port
behind `internal_key`, and nothing internal is reachable or described on the public port."""

from __future__ import annotations

import httpx
import openai
import pytest

API_KEY = "client-key-0123456789"
INTERNAL_KEY = "pods-key-0123456789"
BODY = {"model": "tiny-moe", "prompt": "Hello there", "max_tokens": 3, "temperature": 0}
INTERNAL_PATHS = [
    ("POST", "/v1/internal/generate"),
    ("POST", "/v1/internal/prefill"),
    ("POST", "/v1/internal/kv_abort"),
    ("GET", "/v1/internal/load"),
    ("POST", "/v1/admin/drain"),
    ("GET", "/v1/admin/drain"),
    ("DELETE", "/v1/admin/drain"),
    ("POST", "/drain"),
]


@pytest.fixture(scope="module")
def keyed(start_for_module, tiny_model):
    """A unified pod and a router in front of it, both with both keys."""
    keys = dict(api_key=API_KEY, internal_key=INTERNAL_KEY)
    pod = start_for_module(role="unified", model=str(tiny_model), **keys)
    router = start_for_module(role="router", model=str(tiny_model), decode_service=pod.address,
                              backend_poll_seconds=0.1, **keys)  # fmt: skip
    return pod, router


def _assert_401(r: httpx.Response) -> None:
    assert r.status_code == 401, r.text
    err = r.json()["error"]
    assert err["type"] == "authentication_error" and err["code"] == "invalid_api_key"
    assert set(err) == {"message", "type", "param", "code"}


@pytest.mark.parametrize("which", ["pod", "router"])
def test_public_api_needs_the_api_key(keyed, which):
    srv = keyed[0] if which == "pod" else keyed[1]
    _assert_401(httpx.post(f"{srv.url}/v1/completions", json=BODY, timeout=30))
    _assert_401(httpx.get(f"{srv.url}/v1/models", timeout=30))
    wrong = {"Authorization": f"Bearer {API_KEY}x"}
    _assert_401(httpx.post(f"{srv.url}/v1/completions", json=BODY, headers=wrong, timeout=30))
    # the internal key is not a client key
    pods = {"Authorization": f"Bearer {INTERNAL_KEY}"}
    _assert_401(httpx.post(f"{srv.url}/v1/completions", json=BODY, headers=pods, timeout=30))
    client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key=API_KEY, max_retries=0, timeout=60)
    out = client.completions.create(**BODY)
    assert out.usage.completion_tokens == 3
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{srv.url}/v1", api_key="nope", max_retries=0).models.list()
    # probes stay open: the kubelet and Prometheus send no key
    assert httpx.get(f"{srv.url}/health", timeout=30).status_code == 200
    assert httpx.get(f"{srv.url}/metrics", timeout=30).status_code == 200


@pytest.mark.parametrize("which", ["pod", "router"])
def test_nothing_internal_on_the_public_port(keyed, which):
    srv = keyed[0] if which == "pod" else keyed[1]
    headers = {"Authorization": f"Bearer {API_KEY}"}
    for method, path in INTERNAL_PATHS:
        r = httpx.request(method, f"{srv.url}{path}", json={}, headers=headers, timeout=30)
        assert r.status_code in (404, 405), (path, r.status_code, r.text)
    schema = httpx.get(f"{srv.url}/openapi.json", headers=headers, timeout=30).json()
    assert not [p for p in schema["paths"] if "internal" in p or "drain" in p]
    # a client cannot hand a pod a KV handle through the public API
    r = httpx.post(f"{srv.url}/v1/completions", headers=headers, timeout=30,
                   json=dict(BODY, kv_transfer={"request_id": "kv-x"}))  # fmt: skip
    assert r.status_code == 400 and "kv_transfer" in r.json()["error"]["message"]


@pytest.mark.parametrize("which", ["pod", "router"])
def test_internal_port_needs_the_internal_key(keyed, which):
    srv = keyed[0] if which == "pod" else keyed[1]
    path = "/v1/internal/load" if which == "pod" else "/v1/admin/drain"
    _assert_401(httpx.get(f"{srv.internal_url}{path}", timeout=30))
    client_key = {"Authorization": f"Bearer {API_KEY}"}
    _assert_401(httpx.get(f"{srv.internal_url}{path}", headers=client_key, timeout=30))
    r = httpx.get(f"{srv.internal_url}{path}", headers=srv.internal_headers, timeout=30)
    assert r.status_code == 200, r.text
    # and the public API is not served there
    r = httpx.post(f"{srv.internal_url}/v1/completions", json=BODY, timeout=30,
                   headers=srv.internal_headers)  # fmt: skip
    assert r.status_code == 404


def test_router_with_the_wrong_internal_key_uses_no_pod(keyed, start, tiny_model, wait_for):
    pod, _ = keyed
    router = start(role="router", model=str(tiny_model), decode_service=pod.address,
                   backend_poll_seconds=0.1, internal_key="not-the-pods-key",
                   wait_ready=False)  # fmt: skip
    wait_for(lambda: router.server.pool.polled.is_set())
    assert router.server.pool.available("unified") == []
    assert httpx.get(f"{router.url}/health", timeout=30).status_code == 503
