"""The official `openai` client against a unified server and against the router (in front of
a prefill and a decode pod): completions, chat, streaming, stop, max_tokens, seed, logprobs,
usage, and errors in OpenAI's shape with the right status."""

from __future__ import annotations

import concurrent.futures

import httpx
import openai
import pytest

MODEL = "tiny-moe"
GREEDY = {"temperature": 0, "extra_body": {"ignore_eos": True}}


@pytest.fixture(params=["unified", "router"])
def client(request, unified, stack) -> openai.OpenAI:
    url = unified.url if request.param == "unified" else stack.router.url
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)


def test_models(client):
    assert [m.id for m in client.models.list()] == [MODEL]


def test_completion_max_tokens_and_usage(client):
    out = client.completions.create(model=MODEL, prompt="Hello there", max_tokens=7, **GREEDY)
    assert out.choices[0].finish_reason == "length"
    assert out.usage.prompt_tokens == len(b"Hello there")  # byte-level tokenizer
    assert out.usage.completion_tokens == 7 and out.usage.total_tokens == 7 + 11
    assert out.object == "text_completion" and out.model == MODEL


def test_streaming_completion_equals_non_streaming(client):
    full = client.completions.create(model=MODEL, prompt="abc", max_tokens=9, **GREEDY)
    chunks = list(
        client.completions.create(
            model=MODEL, prompt="abc", max_tokens=9, stream=True,
            stream_options={"include_usage": True}, **GREEDY,
        )
    )  # fmt: skip
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == full.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 9


def test_stop_string(client):
    text = client.completions.create(model=MODEL, prompt="abc", max_tokens=12, **GREEDY)
    text = text.choices[0].text
    assert ">" in text  # this checkpoint's greedy output for "abc" holds '>' (see git history)
    out = client.completions.create(model=MODEL, prompt="abc", max_tokens=12, stop=[">"], **GREEDY)
    assert out.choices[0].text == text[: text.index(">")]
    assert out.choices[0].finish_reason == "stop"


def test_chat_streaming_and_not(client):
    messages = [{"role": "user", "content": "Say something"}]
    full = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=6, **GREEDY)
    msg = full.choices[0].message
    assert msg.role == "assistant" and full.usage.completion_tokens == 6
    stream = client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=6, stream=True, **GREEDY
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == msg.content
    assert chunks[-1].choices[0].finish_reason == "length"


def _sampled_ids(client, seed: int) -> list[int]:
    out = client.completions.create(
        model=MODEL, prompt="Hello there", max_tokens=8, temperature=1.0, seed=seed,
        extra_body={"ignore_eos": True, "return_token_ids": True},
    )  # fmt: skip
    return out.choices[0].model_extra["token_ids"]


def test_seed_repeats_sampling(client):
    a, b, c = _sampled_ids(client, 7), _sampled_ids(client, 7), _sampled_ids(client, 8)
    assert a == b and a != c


def test_logprobs(client):
    out = client.completions.create(model=MODEL, prompt="abc", max_tokens=4, logprobs=2, **GREEDY)
    lp = out.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == 4
    assert all(x <= 0 for x in lp.token_logprobs)
    # greedy: the sampled token is the most likely, so it heads its top-2
    assert all(len(t) == 2 and max(t.values()) == pytest.approx(s) for t, s in
               zip(lp.top_logprobs, lp.token_logprobs))  # fmt: skip
    chat = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=3, logprobs=True,
        top_logprobs=3, **GREEDY,
    )  # fmt: skip
    content = chat.choices[0].logprobs.content
    assert len(content) == 3 and all(len(c.top_logprobs) == 3 for c in content)


def test_error_statuses_and_bodies(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="nope", prompt="x", max_tokens=2)
    assert e.value.status_code == 404 and e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt="x", max_tokens=2, n=2)
    assert e.value.body["param"] == "n" and "n=1" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt="x", max_tokens=2, top_p=3.0)
    assert e.value.body["param"] == "top_p" and e.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as e:  # 600 tokens > the 512-token context
        client.completions.create(model=MODEL, prompt="y" * 600, max_tokens=2)
    assert "max_model_len" in e.value.body["message"]


def test_malformed_body_is_400_in_openai_shape(client):
    r = httpx.post(f"{client.base_url}completions", json={"model": MODEL}, timeout=10)
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "prompt"


def test_concurrent_streams(client, unified):
    prompts = [f"prompt number {i} " * (1 + i % 3) for i in range(6)]
    ref = openai.OpenAI(base_url=f"{unified.url}/v1", api_key="x", max_retries=0)
    want = [ref.completions.create(model=MODEL, prompt=p, max_tokens=8, **GREEDY).choices[0].text
            for p in prompts]  # fmt: skip

    def run(p: str) -> str:
        s = client.completions.create(model=MODEL, prompt=p, max_tokens=8, stream=True, **GREEDY)
        return "".join(c.choices[0].text for c in s if c.choices)

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        assert list(pool.map(run, prompts)) == want
