"""Decode-side KV load time: the whole load vs what stays exposed after the last layer group.

    .venv/bin/python scripts/bench_kv_load.py [--tokens 401] [--repeats 7]

Starts redis-server, a layered prefill pod (G = 4 layer groups for a prompt of up to 4 x
--group-tokens tokens, each shipped as soon as it is computed), a decode pod and a router, one
process each on free loopback ports, all on the shipped demo model. Then it sends --repeats
disaggregated completions one at a time (after --warmup), each with its own random prompt of
--tokens token ids so no prefix cache helps, and reports per request and as medians:

    total    the decode pod starts waiting for group 0 -> the request is decoding
    exposed  the last group's blob came in -> the request is decoding (docs/design.md §3.7)

The decode pod runs this file with --decode-pod: it timestamps every KVTransport.wait_group
return and the moment the request's first output is published (it is decoding from then on),
so any version of the decode path is timed the same way, from outside it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODEL_NAME = "lamina-demo"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def decode_pod(log_path: str, serve_args: list[str]) -> int:
    """`lamina serve` with the two timestamps this benchmark needs, as JSON lines."""
    from lamina_engine.cli import main
    from lamina_engine.serving.async_engine import AsyncEngine
    from lamina_engine.transfer.redis_backend import RedisKVTransport

    log = open(log_path, "a", buffering=1)  # noqa: SIM115 - lives as long as the process
    wait_group, publish = RedisKVTransport.wait_group, AsyncEngine._publish

    async def timed_wait_group(self, request_id, group, deadline_s):
        waited = time.perf_counter()
        blob = await wait_group(self, request_id, group, deadline_s)
        event = {"group": group, "waited": waited, "arrived": time.perf_counter()}
        log.write(json.dumps(event) + "\n")
        return blob

    def timed_publish(self, out):
        if len(out.token_ids) == 1:  # the first output: the request is decoding
            log.write(json.dumps({"active": time.perf_counter()}) + "\n")
        publish(self, out)

    RedisKVTransport.wait_group = timed_wait_group
    AsyncEngine._publish = timed_publish
    return main(["serve", *serve_args])


class Stack:
    def __init__(self, log_path: str, group_tokens: int) -> None:
        self.procs: list[subprocess.Popen] = []
        env = dict(os.environ)
        rport, pport, dport, self.port = (_free_port() for _ in range(4))
        redis = shutil.which("redis-server")
        if redis is None:
            raise SystemExit("redis-server is not installed (apt-get install redis-server)")
        self._spawn([redis, "--port", str(rport), "--bind", "127.0.0.1", "--save", "",
                     "--appendonly", "no"], env)  # fmt: skip
        kv = ["--kv-backend", "redis", "--kv-redis-url", f"redis://127.0.0.1:{rport}/0"]
        common = ["--served-model-name", MODEL_NAME, "--host", "127.0.0.1", *kv]
        serve = [sys.executable, "-m", "lamina_engine.cli", "serve"]
        self._spawn([*serve, "--role", "prefill", "--port", str(pport), "--scheduling-policy",
                     "layered", "--layered-group-tokens", str(group_tokens), *common], env)  # fmt: skip
        self._spawn([sys.executable, __file__, "--decode-pod", log_path, "--", "--role",
                     "decode", "--port", str(dport), *common], env)  # fmt: skip
        self._spawn([*serve, "--role", "router", "--port", str(self.port), "--prefill-service",
                     f"127.0.0.1:{pport}", "--decode-service", f"127.0.0.1:{dport}",
                     "--served-model-name", MODEL_NAME], env)  # fmt: skip
        self.url = f"http://127.0.0.1:{self.port}"
        self.decode_url = f"http://127.0.0.1:{dport}"

    def _spawn(self, args: list[str], env: dict) -> None:
        self.procs.append(subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL))

    def wait_ready(self, timeout_s: float = 300.0) -> None:
        import httpx

        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if any(p.poll() is not None for p in self.procs):
                raise SystemExit("a server exited while starting; see its log above")
            try:
                health = httpx.get(f"{self.url}/health", timeout=1)
                if health.status_code == 200 and health.json().get("prefill"):
                    return
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.25)
        raise SystemExit(f"the router at {self.url} was not ready in {timeout_s:.0f} s")

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.terminate()
        for proc in reversed(self.procs):
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def one_request(stack: Stack, log: Path, prompt: list[int]) -> dict:
    import httpx

    start = log.stat().st_size
    body = {"model": MODEL_NAME, "prompt": prompt, "max_tokens": 4, "temperature": 0,
            "ignore_eos": True}  # fmt: skip
    r = httpx.post(f"{stack.url}/v1/completions", json=body, timeout=120)
    r.raise_for_status()
    with log.open() as f:
        f.seek(start)
        events = [json.loads(line) for line in f]
    groups = [e for e in events if "group" in e]
    active = next(e["active"] for e in events if "active" in e)
    return {
        "groups": len(groups),
        "total_s": active - groups[0]["waited"],
        "exposed_s": active - groups[-1]["arrived"],
    }


def decode_metrics(stack: Stack) -> dict[str, float]:
    """The decode pod's /metrics samples this benchmark reads (summed over label sets)."""
    import httpx

    wanted = ("lamina_kv_fallback_total", "lamina_kv_transfer_exposed_seconds_sum",
              "lamina_kv_transfer_exposed_seconds_count")  # fmt: skip
    got: dict[str, float] = dict.fromkeys(wanted, 0.0)
    for line in httpx.get(f"{stack.decode_url}/metrics", timeout=5).text.splitlines():
        name = line.split("{")[0].split(" ")[0]
        if name in got and 'direction="publish"' not in line:
            got[name] += float(line.split()[-1])
    return got


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--decode-pod":
        return decode_pod(sys.argv[2], sys.argv[4:])  # argv[3] is "--"
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=401, help="prompt length")
    ap.add_argument("--group-tokens", type=int, default=128, help="layered u: G = 4 up to 4u")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "decode-timings.jsonl"
        log.touch()
        stack = Stack(str(log), args.group_tokens)
        try:
            stack.wait_ready()
            results = []
            for i in range(args.warmup + args.repeats):
                prompt = [rng.randrange(3, 4096) for _ in range(args.tokens)]
                got = one_request(stack, log, prompt)
                if i >= args.warmup:
                    results.append(got)
                    print(f"G={got['groups']}  total {got['total_s'] * 1e3:7.2f} ms  "
                          f"exposed {got['exposed_s'] * 1e3:6.2f} ms", flush=True)  # fmt: skip
            metrics = decode_metrics(stack)
        finally:
            stack.stop()
    total = statistics.median(r["total_s"] for r in results)
    exposed = statistics.median(r["exposed_s"] for r in results)
    recomputed = metrics["lamina_kv_fallback_total"]
    print(f"median of {len(results)}: total {total * 1e3:.2f} ms, exposed {exposed * 1e3:.2f} "
          f"ms, exposed / total {exposed / total:.3f}; KV fallbacks {recomputed:.0f}")  # fmt: skip
    n = metrics["lamina_kv_transfer_exposed_seconds_count"]
    if n:  # the decode pod's own account of the same thing, warm-up requests included
        mean = metrics["lamina_kv_transfer_exposed_seconds_sum"] / n
        print(
            f"decode pod's lamina_kv_transfer_exposed_seconds: mean {mean * 1e3:.2f} ms of {n:.0f}"
        )
    return 1 if recomputed else 0


if __name__ == "__main__":
    sys.exit(main())
