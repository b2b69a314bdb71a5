"""Hostile and malformed requests against a unified server and through the router: each is a 400
in OpenAI's error shape (or served, where the value has a meaning), and one request's failure
inside an engine step ends only that request's stream, with an error event."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

MODEL = "tiny-moe"


@pytest.fixture(params=["unified", "router"])
def url(request, unified, stack) -> str:
    return unified.url if request.param == "unified" else stack.router.url


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)


def _assert_openai_400(resp: httpx.Response, *words: str) -> dict:
    assert resp.status_code == 400, resp.text
    err = resp.json()["error"]
    assert set(err) >= {"message", "type", "param", "code"}
    assert err["type"] == "invalid_request_error"
    for word in words:
        assert word in err["message"], err
    return err


def _post_raw(url: str, path: str, raw: str) -> httpx.Response:
    headers = {"content-type": "application/json"}
    return httpx.post(f"{url}/v1/{path}", content=raw.encode(), headers=headers, timeout=60)


def test_top_k_above_vocabulary_means_all(url):
    """top_k = 2**63 once overflowed the sampler and failed every request in the step."""
    client = _client(url)
    base = dict(model=MODEL, prompt="abc", max_tokens=6, temperature=0.8, seed=7)
    huge = client.completions.create(**base, extra_body={"top_k": 2**63, "ignore_eos": True})
    off = client.completions.create(**base, extra_body={"top_k": 0, "ignore_eos": True})
    assert huge.choices[0].text == off.choices[0].text
    assert huge.choices[0].finish_reason == "length"


@pytest.mark.parametrize(
    "field,value,named",
    [
        ("seed", 2**64, "seed"),
        ("max_tokens", 2**70, "max_tokens"),
        ("stop", ["x"] * 1000, "stop"),
        ("stop_token_ids", [2**64], "stop_token_ids"),
        ("logprobs", 10**6, "logprobs"),
        ("min_tokens", -1, "min_tokens"),
        ("repetition_penalty", 1.3, "repetition_penalty"),
        ("logit_bias", {"5": 3}, "logit_bias"),
    ],
)
def test_out_of_range_sampling_fields_are_400(url, field, value, named):
    body = {"model": MODEL, "prompt": "abc", "max_tokens": 4, field: value}
    resp = httpx.post(f"{url}/v1/completions", json=body, timeout=60)
    _assert_openai_400(resp, named)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
@pytest.mark.parametrize(
    "field",
    ["temperature", "top_p", "presence_penalty", "frequency_penalty", "min_p", "top_k",
     "max_tokens", "seed", "repetition_penalty"],
)  # fmt: skip
def test_non_finite_floats_are_400(url, field, literal):
    raw = f'{{"model": "{MODEL}", "prompt": "abc", "max_tokens": 2, "{field}": {literal}}}'
    raw = raw.replace('"max_tokens": 2, "max_tokens"', '"max_tokens"')
    _assert_openai_400(_post_raw(url, "completions", raw), field)


@pytest.mark.parametrize("literal", ["NaN", "Infinity"])
def test_non_finite_numbers_nested_in_the_body_are_400(url, literal):
    tool = ('{"type": "function", "function": {"name": "f", "parameters": {"type": "object", '
            f'"properties": {{"x": {{"type": "number", "default": {literal}}}}}}}}}}}')  # fmt: skip
    raw = (f'{{"model": "{MODEL}", "max_tokens": 2, "tools": [{tool}], '
           '"messages": [{"role": "user", "content": "hi"}]}')  # fmt: skip
    _assert_openai_400(_post_raw(url, "chat/completions", raw), "tools")
    raw = f'{{"model": "{MODEL}", "prompt": "abc", "logit_bias": {{"5": {literal}}}}}'
    _assert_openai_400(_post_raw(url, "completions", raw), "logit_bias")


def test_lone_surrogates_are_400(url):
    raw = json.dumps({"model": MODEL, "prompt": "ab\ud800c", "max_tokens": 2})
    _assert_openai_400(_post_raw(url, "completions", raw), "surrogate")
    chat = {"model": MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": "\udc00"}]}
    _assert_openai_400(_post_raw(url, "chat/completions", json.dumps(chat)), "surrogate")
    # the server still serves
    ok = httpx.post(f"{url}/v1/completions", json={"model": MODEL, "prompt": "a", "max_tokens": 1})
    assert ok.status_code == 200


def test_min_tokens_is_honoured(url):
    """min_tokens used to be dropped silently: no stop string or EOS may end the output
    before it."""
    client = _client(url)
    base = dict(model=MODEL, prompt="abc", max_tokens=40, temperature=0,
                stop=["a", "b", "c", "d", "e", ">"])  # fmt: skip
    early = client.completions.create(**base).usage.completion_tokens
    assert early < 12  # this checkpoint's greedy output soon holds one of the stops
    out = client.completions.create(**base, extra_body={"min_tokens": 12})
    assert out.usage.completion_tokens >= 12


def test_unknown_fields_are_named_in_a_400(url):
    body = {"model": MODEL, "prompt": "abc", "max_tokens": 2, "frobnicate": 1, "temprature": 0}
    err = _assert_openai_400(
        httpx.post(f"{url}/v1/completions", json=body, timeout=60), "frobnicate", "temprature"
    )
    assert err["param"] in ("frobnicate", "temprature")


def test_vllm_fields_the_engine_supports_are_accepted(url):
    body = {
        "model": MODEL, "prompt": "abc", "max_tokens": 3, "temperature": 0, "min_tokens": 1,
        "include_stop_str_in_output": True, "skip_special_tokens": False,
        "repetition_penalty": 1.0, "logit_bias": {}, "stop_token_ids": [5], "top_k": -1,
    }  # fmt: skip
    resp = httpx.post(f"{url}/v1/completions", json=body, timeout=60)
    assert resp.status_code == 200, resp.text


@pytest.mark.parametrize(
    "messages,tools,named",
    [
        ([{"role": "wizard", "content": "hi"}], None, "role"),
        ([{"content": "hi"}], None, "role"),
        ([{"role": "user", "content": "hi"}], [{"type": "function"}], "tools"),
        ([{"role": "user", "content": "hi"}], [{"type": "spell", "function": {"name": "f"}}],
         "tools"),
        ([{"role": "user", "content": "hi"}], [{"type": "function", "function": {}}], "tools"),
        ([{"role": "user", "content": "hi"}], {"type": "function"}, "tools"),
    ],
)  # fmt: skip
def test_chat_unknown_roles_and_malformed_tools_are_400(url, messages, tools, named):
    body = {"model": MODEL, "max_tokens": 2, "messages": messages}
    if tools is not None:
        body["tools"] = tools
    resp = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
    _assert_openai_400(resp, named)


def test_well_formed_tools_are_accepted(url):
    tools = [{"type": "function", "function": {"name": "get_time", "description": "now",
              "parameters": {"type": "object", "properties": {}}}}]  # fmt: skip
    body = {
        "model": MODEL,
        "max_tokens": 2,
        "tools": tools,
        "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}],
    }
    resp = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
    assert resp.status_code == 200, resp.text


def _events(resp: httpx.Response):
    for line in resp.iter_lines():
        if line.startswith("data: "):
            yield line.removeprefix("data: ")


@pytest.mark.parametrize("via", ["unified", "router"])
def test_a_failure_in_a_step_ends_only_its_stream_with_an_error_event(via, unified, stack):
    """A request whose sampling raises inside the step (its params corrupted in the engine,
    as a kernel bug would) fails alone: its stream ends with an error event, not [DONE], and
    the request beside it runs to its end. Through the router the decode pod's engine fails."""
    pod, front = (unified, unified) if via == "unified" else (stack.decode, stack.router)
    engine = pod.server.async_engine.engine
    body = {"model": MODEL, "prompt": "abc", "max_tokens": 500, "ignore_eos": True,
            "temperature": 0.7, "stream": True}  # fmt: skip
    url = f"{front.url}/v1/completions"
    with (
        httpx.stream("POST", url, json=body, timeout=120) as bad,
        httpx.stream("POST", url, json=body, timeout=120) as good,
    ):
        bad_events, good_events = _events(bad), _events(good)
        bad_id = json.loads(next(bad_events))["id"]
        first_good = next(good_events)
        req = engine._requests.get(bad_id)
        assert req is not None, "the request finished before the fault was injected"
        object.__setattr__(req.params, "top_p", "not a number")  # the sampler now raises
        rest = list(bad_events)
        good_rest = [first_good, *good_events]
    assert rest and rest[-1] != "[DONE]"
    err = json.loads(rest[-1])["error"]
    assert "sampl" in err["message"] and err["type"] == "server_error"
    assert good_rest[-1] == "[DONE]"
    chunks = [json.loads(e) for e in good_rest[:-1]]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    # the engine goes on serving
    ok = httpx.post(url, json={"model": MODEL, "prompt": "a", "max_tokens": 2}, timeout=60)
    assert ok.status_code == 200
