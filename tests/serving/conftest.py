"""Fixtures for the serving tests: a tiny random Qwen3-MoE checkpoint with a byte-level
tokenizer and chat template, servers run in-process on free loopback ports, a redis-server.

Everything binds 127.0.0.1 and is torn down by the fixture that started it.
"""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import pytest
import torch

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
MODEL_NAME = "tiny-moe"


def _byte_tokenizer(folder: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.pre_tokenizers import ByteLevel

    alphabet = sorted(ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}  # 256 byte tokens
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIALS)
    tok.save(str(folder / "tokenizer.json"))
    cfg = {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "bos_token": None,
           "chat_template": CHAT_TEMPLATE, "add_bos_token": False}  # fmt: skip
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    import transformers as tf

    folder = tmp_path_factory.mktemp("serving") / MODEL_NAME
    config = tf.Qwen3MoeConfig(
        vocab_size=264, hidden_size=48, num_attention_heads=6, num_key_value_heads=2,
        head_dim=24, intermediate_size=36, moe_intermediate_size=20, num_experts=6,
        num_experts_per_tok=3, norm_topk_prob=True, mlp_only_layers=[1], num_hidden_layers=4,
        max_position_embeddings=512, initializer_range=0.15, eos_token_id=258,
    )  # fmt: skip
    torch.manual_seed(0)
    model = tf.Qwen3MoeForCausalLM(config).eval()
    model.save_pretrained(folder)
    _byte_tokenizer(folder)
    return folder


def load_redis_fixture():
    path = Path(__file__).resolve().parents[1] / "engine" / "redis_fixture.py"
    spec = importlib.util.spec_from_file_location("lamina_test_redis_fixture", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def redis_server():
    rf = load_redis_fixture()
    if not rf.redis_available():
        pytest.fail(
            "redis-server is not installed (apt-get install redis-server; make install does)"
        )
    with rf.RedisServer() as server:
        yield server


INTERNAL_KEY = "test-internal-key-0123456789"  # the stack's shared key (LAMINA_INTERNAL_KEY)


class Running:
    """A server started with run_in_thread; `url` is its http://127.0.0.1:port, `internal_url`
    its internal port's (/v1/internal/*, /v1/admin/drain), `address` that port's HOST:PORT."""

    def __init__(self, server, uv, thread, port) -> None:
        self.server, self.uv, self.thread, self.port = server, uv, thread, port
        self.url = f"http://127.0.0.1:{port}"
        self.internal_port = uv.internal_port
        self.address = f"127.0.0.1:{uv.internal_port}"
        self.internal_url = f"http://{self.address}"
        key = server.config.internal_key
        self.internal_headers = (
            {} if key is None else {"Authorization": f"Bearer {key.get_secret_value()}"}
        )

    def stop(self) -> None:
        self.uv.should_exit = True
        self.thread.join(15)

    def generate(self, request: dict, timeout: float = 60):
        """post_internal(self, "/v1/internal/generate", ...): the router's call."""
        return post_internal(self, "/v1/internal/generate", request, timeout)

    def post_internal(self, path: str, request: dict, timeout: float = 60):
        return post_internal(self, path, request, timeout)


def start_server(local_store=None, wait_ready: bool = True, **settings) -> Running:
    """Build and run the server of ServeConfig(**settings) on a free port."""

    from lamina_engine.serving.cli import build_server, run_in_thread
    from lamina_engine.serving.config import ServeConfig

    settings.setdefault("served_model_name", MODEL_NAME)
    settings.setdefault("dtype", "float32")
    settings.setdefault("device", "cpu")
    settings.setdefault("num_gpu_blocks", 256)
    config = ServeConfig(**settings)
    server = build_server(config, local_store=local_store)
    uv, thread, port = run_in_thread(server)
    running = Running(server, uv, thread, port)
    if wait_ready:
        wait_healthy(running.url)
    return running


def wait_healthy(url: str, timeout_s: float = 60.0) -> None:
    import time

    import httpx

    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{url}/health not ready within {timeout_s} s")


@pytest.fixture(scope="session")
def healthy():
    """healthy(url, timeout_s=60): wait until GET url/health answers 200, else TimeoutError."""
    return wait_healthy


@pytest.fixture(scope="module")
def unified(tiny_model):
    running = start_server(role="unified", model=str(tiny_model))
    yield running
    running.stop()


def _starter():
    started: list[Running] = []

    def _start(local_store=None, wait_ready: bool = True, **settings) -> Running:
        running = start_server(local_store, wait_ready, **settings)
        started.append(running)
        return running

    yield _start
    for running in reversed(started):
        running.stop()


@pytest.fixture
def start():
    """start(**ServeConfig settings) -> Running; every server started is stopped afterwards."""
    yield from _starter()


@pytest.fixture(scope="module")
def start_for_module():
    """Like `start`, but the servers stay up until the test module is done."""
    yield from _starter()


class Stack:
    def __init__(self, prefill: Running, decode: Running, router: Running) -> None:
        self.prefill, self.decode, self.router = prefill, decode, router

    @property
    def fallbacks(self) -> dict[str, int]:
        return self.decode.server.async_engine.fallbacks


def start_stack(tiny_model, redis_url: str, kv_wait_seconds: float = 5.0, **router) -> Stack:
    common = dict(model=str(tiny_model), kv_backend="redis", kv_redis_url=redis_url,
                  kv_wait_seconds=kv_wait_seconds, deployment="test",
                  internal_key=INTERNAL_KEY)  # fmt: skip
    prefill = start_server(role="prefill", **common)
    decode = start_server(role="decode", **common)
    router.setdefault("backend_poll_seconds", 0.2)
    rt = start_server(
        role="router", model=str(tiny_model), prefill_service=prefill.address,
        decode_service=decode.address, internal_key=INTERNAL_KEY, **router,
    )  # fmt: skip
    return Stack(prefill, decode, rt)


@pytest.fixture(scope="module")
def stack(tiny_model, redis_server):
    s = start_stack(tiny_model, redis_server.url)
    yield s
    for running in (s.router, s.decode, s.prefill):
        running.stop()


@pytest.fixture
def wait_for():
    """wait_for(predicate, timeout_s=10): poll until predicate() is true, else fail."""

    def wait(predicate, timeout_s: float = 10.0) -> None:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if predicate():
                return
            time.sleep(0.01)
        raise AssertionError("condition not met in time")

    return wait


def post_internal(pod: Running, path: str, request: dict, timeout: float = 30):
    """The OpenAI completion `request` (its `kv_transfer.request_id`, if any, is the KV handle)
    sent to `pod`'s internal `path` the way the router sends it: tokenized and validated once
    (serving/prepared_request.py), on the internal port, with the pod's internal key."""
    import dataclasses

    import httpx

    from lamina_engine.serving.prepared_request import prepare
    from lamina_engine.serving.protocol import CompletionRequest

    request = dict(request)
    handle = (request.pop("kv_transfer", None) or {}).get("request_id")
    tokenizer = pod.server.async_engine.engine.tokenizer
    body = prepare("completions", CompletionRequest.model_validate(request), tokenizer)
    body = dataclasses.replace(body, kv_handle=handle)
    return httpx.post(f"{pod.internal_url}{path}", json=body.to_wire(), timeout=timeout,
                      headers=pod.internal_headers)  # fmt: skip


@pytest.fixture(scope="session")
def post_prefill():
    """post_prefill(pod, request) -> httpx.Response: post_internal to /v1/internal/prefill."""

    def post(pod: Running, request: dict, timeout: float = 30):
        return post_internal(pod, "/v1/internal/prefill", request, timeout)

    return post


@pytest.fixture(scope="session")
def post_generate():
    """post_generate(pod, request) -> httpx.Response: post_internal to /v1/internal/generate
    (a decode pod given `kv_transfer` loads the KV shipped under that handle)."""

    def post(pod: Running, request: dict, timeout: float = 60):
        return pod.generate(request, timeout)

    return post
