"""A bounded load test on loopback: 200 requests at concurrency 8 through router -> prefill ->
decode while the prefill process is killed (SIGKILL) and restarted once. Every request must
finish with the unified server's tokens."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

N_REQUESTS, CONCURRENCY = 200, 8
PROMPTS = [f"Load test prompt {i}: " + "words " * (i % 7) for i in range(10)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def complete(url: str, prompt: str) -> list[int]:
    body = {"model": "tiny-moe", "prompt": prompt, "max_tokens": 6, "temperature": 0,
            "ignore_eos": True, "return_token_ids": True}  # fmt: skip
    r = httpx.post(f"{url}/v1/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["token_ids"]


def spawn_prefill(model, port: int, internal: int, redis_url: str) -> subprocess.Popen:
    args = [sys.executable, "-m", "lamina_engine.cli", "serve", "--role", "prefill",
            "--model", str(model), "--port", str(port), "--internal-port", str(internal),
            "--served-model-name", "tiny-moe",
            "--dtype", "float32", "--device", "cpu", "--num-gpu-blocks", "256",
            "--kv-backend", "redis", "--kv-redis-url", redis_url]  # fmt: skip
    env = dict(os.environ, LAMINA_DEPLOYMENT="load")
    return subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.mark.slow
def test_200_requests_survive_a_prefill_restart(start, tiny_model, redis_server, unified, healthy):
    want = {p: complete(unified.url, p) for p in PROMPTS}
    port, internal = _free_port(), _free_port()  # not public + 1: that one may be taken
    prefill_url = f"http://127.0.0.1:{port}"
    procs = [spawn_prefill(tiny_model, port, internal, redis_server.url)]
    try:
        healthy(prefill_url, 120)
        decode = start(role="decode", model=str(tiny_model), kv_backend="redis",
                       kv_redis_url=redis_server.url, kv_wait_seconds=3.0,
                       deployment="load")  # fmt: skip
        router = start(role="router", model=str(tiny_model), backend_poll_seconds=0.2,
                       prefill_service=f"127.0.0.1:{internal}",
                       decode_service=decode.address)  # fmt: skip
        done = []

        def chaos() -> None:  # kill the prefill pod a quarter of the way in, restart it
            while len(done) < N_REQUESTS // 4:
                time.sleep(0.05)
            procs[0].send_signal(signal.SIGKILL)
            procs[0].wait()
            procs.append(spawn_prefill(tiny_model, port, internal, redis_server.url))

        def one(i: int) -> bool:
            prompt = PROMPTS[i % len(PROMPTS)]
            ok = complete(router.url, prompt) == want[prompt]
            done.append(i)
            return ok

        killer = threading.Thread(target=chaos, daemon=True)  # a failed run must not hang
        killer.start()
        with concurrent.futures.ThreadPoolExecutor(CONCURRENCY) as pool:
            results = list(pool.map(one, range(N_REQUESTS)))
        killer.join()
        assert all(results) and len(results) == N_REQUESTS
        fallbacks = decode.server.async_engine.fallbacks
        assert sum(fallbacks.values()) >= 1  # the kill really hit requests in flight
        assert set(fallbacks) <= {"PrefillFailed", "KVTimeout"}
        paths = router.server.metrics.router_requests
        assert paths.labels("router", "disagg")._value.get() >= N_REQUESTS // 4
        # the restarted pod takes disaggregated work again once the router sees it ready
        healthy(prefill_url, 120)
        time.sleep(0.5)
        before, failed = paths.labels("router", "disagg")._value.get(), dict(fallbacks)
        assert all(complete(router.url, p) == want[p] for p in PROMPTS[:5])
        assert paths.labels("router", "disagg")._value.get() == before + 5
        assert decode.server.async_engine.fallbacks == failed
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(20)
