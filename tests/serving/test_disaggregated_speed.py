"""Disaggregated serving with SPEED (docs/design.md §3.4, §3.7) over a real redis-server: the prefill
pod ships layers [0, K) of every prompt token plus layers [K, L) of the full-depth prompt tokens
only, the decode pod continues from them with the tokens of a unified SPEED server (greedy,
fp32), and the bytes shipped shrink to about K/L of the full-depth bytes."""

from __future__ import annotations

import httpx
import pytest

from lamina_engine.transfer.wire import HEADER_SIZE

# tiny_model: L = 4 layers, 2 KV heads of 24 dims, fp32
L, K, WIDTH, FP32 = 4, 2, 2 * 24, 4
SPEED = dict(speed_prefill_layers=K, speed_anchors=1)
PROMPT = "SPEED ships the lower layers of every prompt token, the upper only of a few."


def complete(url: str, prompt, max_tokens: int = 10, **extra) -> list[int]:
    body = {"model": "tiny-moe", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
            "ignore_eos": True, "return_token_ids": True, **extra}  # fmt: skip
    r = httpx.post(f"{url}/v1/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["token_ids"]


def complete_kv(post_generate, pod, prompt, handle: str, max_tokens: int = 10) -> list[int]:
    """The decode pod's answer from the KV shipped under `handle` (the router's call)."""
    body = {"model": "tiny-moe", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
            "ignore_eos": True, "return_token_ids": True, "kv_transfer": {"request_id": handle}}  # fmt: skip
    r = post_generate(pod, body)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["token_ids"]


def prefill(post_prefill, pod, prompt: str, handle: str) -> dict:
    """Run the prefill pod's internal endpoint; its report says what it shipped."""
    request = {"model": "tiny-moe", "prompt": prompt, "max_tokens": 10, "temperature": 0,
               "ignore_eos": True, "kv_transfer": {"request_id": handle}}  # fmt: skip
    r = post_prefill(pod, request)
    assert r.status_code == 200, r.text
    return r.json()


def shipped_bytes(objects: int, layer_tokens: int) -> int:
    """Wire bytes of `objects` blobs holding `layer_tokens` (layer, token) KV pairs in all."""
    return objects * HEADER_SIZE + 2 * layer_tokens * WIDTH * FP32


@pytest.fixture
def speed_unified(start, tiny_model):
    return start(role="unified", model=str(tiny_model), **SPEED)


def redis_common(tiny_model, redis_server, deployment: str) -> dict:
    return dict(model=str(tiny_model), kv_backend="redis", kv_redis_url=redis_server.url,
                kv_wait_seconds=5.0, deployment=deployment)  # fmt: skip


def test_speed_disaggregated_equals_unified_and_ships_k_over_l(
    start, tiny_model, redis_server, speed_unified, post_prefill, post_generate
):
    common = redis_common(tiny_model, redis_server, "speed-chunked")
    pre = start(role="prefill", **SPEED, **common)
    dec = start(role="decode", **SPEED, **common)
    full_pre = start(role="prefill", **common)  # full depth, for the byte comparison
    router = start(role="router", model=str(tiny_model), backend_poll_seconds=0.2,
                   prefill_service=pre.address, decode_service=dec.address)  # fmt: skip
    for prompt in ("The quick brown fox jumps over", PROMPT, "hi"):
        assert complete(router.url, prompt) == complete(speed_unified.url, prompt)
    assert dec.server.async_engine.fallbacks == {}  # the KV really came over Redis

    p = len(PROMPT)  # byte tokenizer: one token per character
    report = prefill(post_prefill, pre, PROMPT, "speed-bytes")
    full = prefill(post_prefill, full_pre, PROMPT, "full-bytes")
    # 2 lower groups split [0, K) for all P tokens + 1 upper object: anchor + last token
    assert report["kv_groups"] == 3 and full["kv_groups"] == 4
    assert report["kv_bytes"] == shipped_bytes(3, K * p + (L - K) * 2)
    assert full["kv_bytes"] == shipped_bytes(4, L * p)
    assert K / L < report["kv_bytes"] / full["kv_bytes"] < K / L + 0.03
    got = complete_kv(post_generate, dec, PROMPT, "speed-bytes")
    assert got[0] == report["first_token"]
    assert got == complete(speed_unified.url, PROMPT)
    assert dec.server.async_engine.fallbacks == {}


def test_speed_layered_prefill_ships_lower_groups_early(
    start, tiny_model, redis_server, speed_unified, post_prefill, post_generate
):
    """Layered cohort groups split the lower layers [0, K): the first ships while the second
    computes; the second and the upper object ship when the prompt finishes."""
    common = redis_common(tiny_model, redis_server, "speed-layered")
    pre = start(role="prefill", scheduling_policy="layered", layered_group_tokens=8,
                **SPEED, **common)  # fmt: skip
    dec = start(role="decode", **SPEED, **common)
    report = prefill(post_prefill, pre, PROMPT, "speed-layered-1")
    assert report["kv_groups"] == 3 and report["prompt_tokens"] == len(PROMPT)
    assert pre.server.kv_export.groups_shipped_early == 1
    assert report["kv_bytes"] == shipped_bytes(3, K * len(PROMPT) + (L - K) * 2)
    got = complete_kv(post_generate, dec, PROMPT, "speed-layered-1")
    assert got == complete(speed_unified.url, PROMPT)
    assert dec.server.async_engine.fallbacks == {}


def test_mismatched_speed_settings_fall_back_to_recompute(
    start, tiny_model, redis_server, unified, post_prefill, post_generate
):
    """A full-depth decode pod cannot use SPEED KV (the upper layers lack most positions): it
    says so, recomputes the prompt and answers with its own full-depth tokens."""
    common = redis_common(tiny_model, redis_server, "speed-mismatch")
    pre = start(role="prefill", **SPEED, **common)
    dec = start(role="decode", **common)
    prefill(post_prefill, pre, PROMPT, "speed-mismatch-1")
    got = complete_kv(post_generate, dec, PROMPT, "speed-mismatch-1")
    assert got == complete(unified.url, PROMPT)
    assert dec.server.async_engine.fallbacks == {"KVCorrupt": 1}
