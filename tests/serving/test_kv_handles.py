"""Issue 10 #3, KV-cache poisoning: a decode pod loads shipped KV only under a handle the router
minted for exactly that prompt and model, and such KV enters its prefix cache only when the
handle verified. Before, KV shipped for one prompt was loaded for another and cached under the
other's hashes, so a later client with that prompt got the wrong answer. Ids are bounded."""

from __future__ import annotations

import httpx
import pytest
from pydantic import SecretStr

from lamina_engine.serving.kv_handles import Verdict, mint, verify
from lamina_engine.serving.protocol import OpenAIError

KEY = "deployment-key-0123456789"
MODEL = "tiny-moe"
# two prompts of one length (the byte tokenizer: one token per byte), two full 16-token blocks
A = "The first client asks about red apples"
B = "A second client asks about green pears"


def ids(pod, text: str) -> list[int]:
    return pod.server.async_engine.engine.tokenizer.encode(text)  # what the router sends


def request(prompt: str, handle: str | None = None, max_tokens: int = 8) -> dict:
    body = {"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
            "ignore_eos": True, "return_token_ids": True}  # fmt: skip
    if handle is not None:
        body["kv_transfer"] = {"request_id": handle}
    return body


def public(pod, prompt: str) -> dict:
    r = httpx.post(f"{pod.url}/v1/completions", json=request(prompt), timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def test_handles_bind_prompt_and_model():
    key = SecretStr(KEY)
    h = mint(key, [1, 2, 3], MODEL)
    assert len(h) <= 128 and h.startswith("kv-")
    assert verify(key, h, [1, 2, 3], MODEL) is Verdict.VERIFIED
    for prompt, model, k in (([1, 2, 4], MODEL, key), ([1, 2, 3], "other", key),
                             ([1, 2, 3], MODEL, SecretStr(KEY + "x"))):  # fmt: skip
        with pytest.raises(OpenAIError) as e:
            verify(k, h, prompt, model)
        assert e.value.status == 400 and e.value.code == "invalid_kv_handle"
    assert verify(None, h, [9], MODEL) is Verdict.UNVERIFIABLE  # no key: used, never cached
    assert "." not in mint(None, [1], MODEL)


@pytest.fixture(scope="module")
def keyed(start_for_module, tiny_model, redis_server):
    common = dict(model=str(tiny_model), kv_backend="redis", kv_redis_url=redis_server.url,
                  kv_wait_seconds=5.0, deployment="poison", internal_key=KEY)  # fmt: skip
    return start_for_module(role="prefill", **common), start_for_module(role="decode", **common)


def _cached_blocks(pod) -> int:
    return pod.server.async_engine.engine.scheduler.block_manager.num_cached_blocks


def test_mismatched_handle_is_refused_and_never_poisons(keyed, unified):
    prefill, decode = keyed
    assert len(ids(prefill, A)) == len(ids(prefill, B)) == 38
    handle_a = mint(SecretStr(KEY), ids(prefill, A), MODEL)
    r = prefill.post_internal("/v1/internal/prefill", request(A, handle_a))
    assert r.status_code == 200, r.text  # A's KV is in the store under handle_a
    # the attack: ask the decode pod to serve B from A's KV
    r = decode.generate(request(B, handle_a))
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_kv_handle", r.text
    forged = handle_a.rpartition(".")[0] + "." + "0" * 64
    assert decode.generate(request(A, forged)).status_code == 400
    assert decode.generate(request(A, "kv-no-mac-at-all")).status_code == 400
    # nor will a prefill pod publish B's KV under A's handle
    r = prefill.post_internal("/v1/internal/prefill", request(B, handle_a))
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_kv_handle"
    assert _cached_blocks(decode) == 0 and decode.server.async_engine.fallbacks == {}
    # a later client asking B gets B's answer, computed here, from no cached block
    got = public(decode, B)
    assert got["choices"][0]["token_ids"] == public(unified, B)["choices"][0]["token_ids"]
    assert "prompt_tokens_details" not in got["usage"]
    # the handle minted for A serves A from the shipped KV, which then enters the cache
    before = _cached_blocks(decode)
    r = decode.generate(request(A, handle_a))
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["token_ids"] == public(unified, A)["choices"][0]["token_ids"]
    assert decode.server.async_engine.fallbacks == {}
    assert _cached_blocks(decode) > before


def test_unverifiable_kv_serves_its_request_but_is_never_cached(start, tiny_model, redis_server,
                                                                unified):  # fmt: skip
    """Pods without an internal key cannot verify a handle: the shipped KV serves the request it
    was sent with, yet no block of it enters the prefix cache, so it can never answer another
    client (here: A's KV sent with B's prompt changes that request only)."""
    common = dict(model=str(tiny_model), kv_backend="redis", kv_redis_url=redis_server.url,
                  kv_wait_seconds=5.0, deployment="unverified")  # fmt: skip
    prefill, decode = start(role="prefill", **common), start(role="decode", **common)
    for handle, prompt in (("plain-a", A), ("plain-b", A)):
        r = prefill.post_internal("/v1/internal/prefill", request(prompt, handle))
        assert r.status_code == 200, r.text
    r = decode.generate(request(A, "plain-a"))
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["token_ids"] == public(unified, A)["choices"][0]["token_ids"]
    assert decode.generate(request(B, "plain-b")).status_code == 200  # A's KV, B's request
    assert decode.server.async_engine.fallbacks == {}  # both really loaded the shipped KV
    assert _cached_blocks(decode) == 0
    got = public(decode, B)
    assert got["choices"][0]["token_ids"] == public(unified, B)["choices"][0]["token_ids"]
    assert "prompt_tokens_details" not in got["usage"]


@pytest.mark.parametrize("handle", ["k" * 129, "kv-ok/../x", "kv ok", "kv-\u00e9"])
def test_ids_are_bounded(keyed, handle):
    prefill, decode = keyed
    for pod, path in ((decode, "/v1/internal/generate"), (prefill, "/v1/internal/prefill")):
        r = pod.post_internal(path, request(A, handle))
        assert r.status_code == 400 and "kv_handle" in r.json()["error"]["message"], r.text
    r = httpx.post(f"{decode.internal_url}/v1/internal/kv_abort", json={"request_id": handle},
                   headers=decode.internal_headers, timeout=30)  # fmt: skip
    assert r.status_code == 400 and "request_id" in r.json()["error"]["message"], r.text
    assert "k" * 129 not in decode.server._kv_aborted


def test_internal_generate_checks_the_prompt_against_the_engine(keyed):
    _, decode = keyed
    wire = {"kind": "completions", "model": MODEL, "params": {"max_tokens": 4}}
    for prompt_ids, words in (([1] * 600, "max_model_len"), ([5, 264], "[0, 264)"),
                              ([-1], "[0, 264)")):  # fmt: skip
        r = httpx.post(f"{decode.internal_url}/v1/internal/generate", timeout=30,
                       json=dict(wire, prompt_ids=prompt_ids), headers=decode.internal_headers)  # fmt: skip
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert words in err["message"] and err["param"] == "prompt_ids"
