"""Every way the shipped KV can fail makes the decode pod recompute the prompt: the request
still completes with the unified server's tokens, and lamina_kv_fallback_total counts it."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid

import httpx
import pytest
import torch

from lamina_engine.serving.kv_handles import mint
from lamina_engine.transfer import KVMeta, KVTransportError, RedisKVTransport, encode_kv

PROMPT = "Disaggregated serving must never be wrong"
N_PROMPT = len(PROMPT.encode())  # the byte-level tokenizer: one token per byte


def complete(url, handle: str | None = None, max_tokens: int = 8) -> dict:
    body = {"model": "tiny-moe", "prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0,
            "ignore_eos": True, "return_token_ids": True}  # fmt: skip
    if handle:  # the router's call: `url` is then the decode pod (a Running)
        body["kv_transfer"] = {"request_id": handle}
        r = url.generate(body, 60)
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]
    r = httpx.post(f"{url}/v1/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]


def put(redis_url: str, handle: str, blob: bytes, ttl_s: float = 60.0) -> None:
    async def go():
        t = RedisKVTransport.from_url(redis_url, deployment="test", ttl_s=ttl_s, ready_ttl_s=60)
        try:
            await t.put(handle, 0, blob, last=True, first_token=65)
        finally:
            await t.close()

    asyncio.run(go())


def minted(pod) -> str:
    """The handle the router mints for PROMPT (the stack's pods share an internal key)."""
    ids = pod.server.async_engine.engine.tokenizer.encode(PROMPT)
    return mint(pod.server.config.internal_key, ids, "tiny-moe")


def kv_blob(num_tokens: int = N_PROMPT) -> bytes:
    # 4 layers x 2 kv heads x 24 head_dim, matching the tiny model; values are irrelevant here.
    meta = KVMeta(torch.float32, 0, 4, 0, num_tokens, 2, 24, last=True, first_token=65)
    return encode_kv(torch.randn(meta.shape), meta)


@pytest.fixture(scope="module")
def expected(unified) -> list[int]:
    return complete(unified.url)["token_ids"]


def _fallback_case(decode, expected, reason: str, handle: str) -> None:
    fallbacks = decode.server.async_engine.fallbacks
    before = fallbacks.get(reason, 0)
    got = complete(decode, handle)
    assert got["token_ids"] == expected
    assert fallbacks.get(reason, 0) == before + 1


def test_kv_never_published_times_out_and_recomputes(start, tiny_model, redis_server, expected):
    # A decode pod of its own with a 0.5 s deadline: waiting out the stack's 5 s (kept for the
    # race against the router's notice below) would show nothing more.
    decode = start(role="decode", model=str(tiny_model), kv_backend="redis", deployment="test",
                   kv_redis_url=redis_server.url, kv_wait_seconds=0.5)  # fmt: skip
    _fallback_case(decode, expected, "KVTimeout", f"missing-{uuid.uuid4().hex}")


def test_corrupt_kv_recomputes(stack, expected, redis_server):
    handle = minted(stack.decode)
    blob = bytearray(kv_blob())
    blob[200] ^= 0xFF  # one flipped byte in the payload
    put(redis_server.url, handle, bytes(blob))
    _fallback_case(stack.decode, expected, "KVCorrupt", handle)


def test_truncated_kv_recomputes(stack, expected, redis_server):
    handle = minted(stack.decode)
    put(redis_server.url, handle, kv_blob()[:-100])
    _fallback_case(stack.decode, expected, "KVCorrupt", handle)


def test_kv_for_another_prompt_recomputes(stack, expected, redis_server):
    handle = minted(stack.decode)
    put(redis_server.url, handle, kv_blob(N_PROMPT - 3))
    _fallback_case(stack.decode, expected, "KVCorrupt", handle)


def test_expired_kv_recomputes(stack, expected, redis_server):
    handle = minted(stack.decode)
    put(redis_server.url, handle, kv_blob(), ttl_s=0.05)
    asyncio.run(asyncio.sleep(0.3))
    _fallback_case(stack.decode, expected, "KVMissing", handle)


def test_prefill_dying_mid_transfer_recomputes(stack, expected, monkeypatch):
    """The prefill pod ships group 0, then its transport dies: the decode pod waits out its
    deadline for group 1 and recomputes; the router's request still gets the right tokens."""
    transport = stack.prefill.server.transport
    real_put = transport.put

    async def dying_put(request_id, group, blob, **kw):
        if group >= 1:
            raise KVTransportError("simulated prefill pod death")
        await real_put(request_id, group, blob, **kw)

    monkeypatch.setattr(transport, "put", dying_put)
    before = stack.fallbacks.get("PrefillFailed", 0)
    start = time.monotonic()
    assert complete(stack.router.url)["token_ids"] == expected
    assert stack.fallbacks.get("PrefillFailed", 0) == before + 1
    # the router's notice beat the decode pod's 5 s KV deadline (the reason says so too)
    assert time.monotonic() - start < 4.5
    # what had arrived (group 0) sat in a reservation: it was released, the recompute is done
    blocks = stack.decode.server.async_engine.engine.scheduler.block_manager
    assert blocks.num_free_blocks == blocks.num_blocks


def test_prefill_pod_gone_recomputes(stack, expected, monkeypatch):
    """The prefill pod's address stops answering: the router notices the failed connection and
    the decode pod recomputes."""
    pod = next(p for p in stack.router.server.pool.pods.values() if p.service == "prefill")
    monkeypatch.setattr(stack.router.server.pool, "refresh", _no_refresh)
    # A refresh already under way would poll the dead address and take the pod out of the
    # pool (the request then goes direct, with no fallback): let it finish first.
    time.sleep(3 * stack.router.server.pool.poll_s)
    monkeypatch.setattr(pod, "address", "127.0.0.1:9")  # nothing listens on the discard port
    before = stack.fallbacks.get("PrefillFailed", 0)
    assert complete(stack.router.url)["token_ids"] == expected
    assert stack.fallbacks.get("PrefillFailed", 0) == before + 1


async def _no_refresh() -> None:
    """Keep the router's view frozen (the pod stays 'ready') for the duration of a test."""


def test_redis_down_recomputes(start, tiny_model, expected):
    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        dead = sock.getsockname()[1]
    decode = start(role="decode", model=str(tiny_model), kv_backend="redis",
                   kv_redis_url=f"redis://127.0.0.1:{dead}/0", kv_wait_seconds=2.0)  # fmt: skip
    got = complete(decode, f"down-{uuid.uuid4().hex}")
    assert got["token_ids"] == expected
    assert decode.server.async_engine.fallbacks == {"KVTransportError": 1}
