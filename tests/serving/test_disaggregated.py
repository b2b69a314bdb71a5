"""Router + prefill + decode over a real redis-server: the same tokens as a unified server
(greedy, fp32), and every KV failure falls back to recomputing with the right tokens."""

from __future__ import annotations

import httpx

PROMPTS = ["The quick brown fox jumps over", "Lamina ships KV caches between pods. " * 3, "hi"]


def complete(url: str, prompt, max_tokens: int = 10, **extra) -> dict:
    body = {"model": "tiny-moe", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
            "ignore_eos": True, "return_token_ids": True, **extra}  # fmt: skip
    r = httpx.post(f"{url}/v1/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]


def test_disaggregated_tokens_equal_unified(stack, unified):
    routed = stack.router.server.metrics.router_requests
    before = routed.labels("router", "disagg")._value.get()
    for prompt in PROMPTS * 2:  # the second time, the decode pod's prefix cache holds blocks
        want = complete(unified.url, prompt)
        got = complete(stack.router.url, prompt)
        assert got["token_ids"] == want["token_ids"]
        assert got["text"] == want["text"]
    assert routed.labels("router", "disagg")._value.get() - before == 2 * len(PROMPTS)
    assert stack.fallbacks == {}  # the KV really came over Redis


def test_layered_prefill_ships_each_group_as_computed(
    start, tiny_model, redis_server, unified, post_prefill, post_generate
):
    """A layered prefill pod (one layer per group step here) ships 4 groups, 3 of them while
    later groups still compute; the decode pod continues from them with unified's tokens."""
    common = dict(model=str(tiny_model), kv_backend="redis", kv_redis_url=redis_server.url,
                  kv_wait_seconds=5.0, deployment="layered")  # fmt: skip
    prefill = start(role="prefill", scheduling_policy="layered", layered_group_tokens=8,
                    **common)  # fmt: skip
    decode = start(role="decode", **common)
    prompt = "Layered prefill: one cohort, G groups."  # 38 tokens -> G = 8, capped at 4 layers
    request = {"model": "tiny-moe", "prompt": prompt, "max_tokens": 10, "temperature": 0,
               "ignore_eos": True, "kv_transfer": {"request_id": "layered-1"}}  # fmt: skip
    shipped = post_prefill(prefill, request)
    assert shipped.status_code == 200, shipped.text
    report = shipped.json()
    assert report["kv_groups"] == 4 and report["prompt_tokens"] == len(prompt)
    assert prefill.server.kv_export.groups_shipped_early == 3
    assert 0 <= report["exposed_seconds"] <= report["transfer_seconds"] + 0.05
    r = post_generate(decode, dict(request, return_token_ids=True))
    assert r.status_code == 200, r.text
    got = r.json()["choices"][0]
    assert got["token_ids"] == complete(unified.url, prompt)["token_ids"]
    assert got["token_ids"][0] == report["first_token"]
    assert decode.server.async_engine.fallbacks == {}


def test_short_prompts_stay_on_the_decode_pod(start, stack, tiny_model, unified):
    router = start(role="router", model=str(tiny_model), backend_poll_seconds=0.2,
                   prefill_service=stack.prefill.address, decode_service=stack.decode.address,
                   internal_key=stack.router.server.config.internal_key,
                   disaggregation_min_prompt_tokens=20)  # fmt: skip
    paths = router.server.metrics.router_requests
    for prompt in ("hi", PROMPTS[1]):
        assert (
            complete(router.url, prompt)["token_ids"] == complete(unified.url, prompt)["token_ids"]
        )
    assert paths.labels("router", "direct")._value.get() == 1
    assert paths.labels("router", "disagg")._value.get() == 1


def test_local_transport_between_servers_in_one_process(start, tiny_model, unified):
    from lamina_engine.transfer import LocalKVStore

    store = LocalKVStore()
    common = dict(model=str(tiny_model), kv_backend="local", kv_wait_seconds=5.0)
    prefill = start(role="prefill", local_store=store, **common)
    decode = start(role="decode", local_store=store, **common)
    router = start(role="router", model=str(tiny_model), backend_poll_seconds=0.2,
                   prefill_service=prefill.address, decode_service=decode.address)  # fmt: skip
    for prompt in PROMPTS:
        assert (
            complete(router.url, prompt)["token_ids"] == complete(unified.url, prompt)["token_ids"]
        )
    assert decode.server.async_engine.fallbacks == {}
    assert len(store) == 0  # the decode pod deleted what it loaded
