"""Fault probes against `lamina up` (issue 10 #7, #8), the numbers in docs/reliability.md.

Starts `lamina up` (router + prefill + decode + redis-server, the built-in demo model unless
--model), keeps --concurrency greedy completions of one prompt in flight, and runs each phase
for --seconds while it counts requests, wrong texts, errors and latency:

    baseline    nothing happens
    flushall    FLUSHALL on the stack's Redis every --flush-every seconds
    frozen      the prefill process is stopped (SIGSTOP), then continued (SIGCONT)
    killed      the prefill process is killed (SIGKILL); `lamina up` restarts it

and the decode pod's lamina_kv_fallback_total by reason over the phase. One JSON line per
phase on stdout. Usage: .venv/bin/python scripts/probe_faults.py [--seconds 20]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

import httpx
import redis

BODY = {"model": "lamina-demo", "prompt": "Once upon a time", "max_tokens": 16,
        "temperature": 0, "ignore_eos": True}  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Up:
    def __init__(self, model: str | None) -> None:
        self.port, self.log = free_port(), []
        argv = [sys.executable, "-m", "lamina_engine.cli", "up", "--port", str(self.port)]
        self.proc = subprocess.Popen(argv + (["--model", model] if model else []),
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True)  # fmt: skip
        threading.Thread(target=lambda: self.log.extend(self.proc.stdout), daemon=True).start()

    def text(self) -> str:
        return "".join(self.log)

    def wait_for(self, needle: str, timeout_s: float = 300) -> None:
        end = time.monotonic() + timeout_s
        while needle not in self.text():
            if time.monotonic() > end or self.proc.poll() is not None:
                raise RuntimeError(f"{needle!r} not seen:\n{self.text()}")
            time.sleep(0.1)

    def child(self, name: str) -> tuple[int, list[int]]:
        """(pid, ports) of the newest `name` process."""
        found = re.findall(rf"started {name} \(pid (\d+), ports ([\d, ]+)\)", self.text())
        pid, ports = found[-1]
        return int(pid), [int(p) for p in ports.split(",")]

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(60)


def fallbacks(decode_port: int) -> dict[str, float]:
    text = httpx.get(f"http://127.0.0.1:{decode_port}/metrics", timeout=5).text
    pattern = r'lamina_kv_fallback_total\{[^}]*reason="([^"]+)"[^}]*\} ([\d.e+]+)'
    return {reason: float(v) for reason, v in re.findall(pattern, text)}


def load(url: str, want: str, stop: threading.Event, concurrency: int) -> list[tuple]:
    """(seconds, outcome) per request until `stop`; outcome ok, wrong, or the error."""
    results: list[tuple] = []

    def worker() -> None:
        with httpx.Client(timeout=120) as client:
            while not stop.is_set():
                t0 = time.monotonic()
                try:
                    r = client.post(f"{url}/v1/completions", json=BODY)
                    if r.status_code != 200:
                        outcome = f"http {r.status_code}"
                    else:
                        outcome = "ok" if r.json()["choices"][0]["text"] == want else "wrong"
                except httpx.HTTPError as exc:
                    outcome = type(exc).__name__
                results.append((time.monotonic() - t0, outcome))

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    return results, threads


def phase(name: str, up: Up, want: str, args, fault) -> dict:
    decode_port = up.child("decode")[1][0]
    before, stop = fallbacks(decode_port), threading.Event()
    results, threads = load(f"http://127.0.0.1:{up.port}", want, stop, args.concurrency)
    t0 = time.monotonic()
    fault()
    while time.monotonic() - t0 < args.seconds:
        time.sleep(0.1)
    stop.set()
    for t in threads:
        t.join()
    after = fallbacks(decode_port)
    seconds = sorted(s for s, _ in results)
    outcomes: dict[str, int] = {}
    for _, o in results:
        outcomes[o] = outcomes.get(o, 0) + 1
    return {
        "phase": name,
        "requests": len(results),
        "outcomes": outcomes,
        "latency_s": {
            "p50": round(statistics.median(seconds), 3),
            "p95": round(seconds[int(0.95 * (len(seconds) - 1))], 3),
            "max": round(seconds[-1], 3),
        },
        "kv_fallbacks": {
            k: after[k] - before.get(k, 0) for k in after if after[k] - before.get(k, 0)
        },
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="checkpoint folder (default: the built-in demo model)")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--flush-every", type=float, default=0.5)
    args = p.parse_args()
    up = Up(args.model)
    try:
        up.wait_for("Ctrl-C stops it")
        url = f"http://127.0.0.1:{up.port}"
        want = httpx.post(f"{url}/v1/completions", json=BODY, timeout=60).json()
        want = want["choices"][0]["text"]
        store = redis.Redis(port=up.child("redis")[1][0])

        def storm() -> None:
            stop = time.monotonic() + args.seconds
            while time.monotonic() < stop:
                store.flushall()
                time.sleep(args.flush_every)

        def freeze() -> None:
            pid = up.child("prefill")[0]
            os.kill(pid, signal.SIGSTOP)
            timer = threading.Timer(args.seconds / 2, os.kill, (pid, signal.SIGCONT))
            timer.start()

        back: dict[str, float] = {}

        def kill() -> None:
            os.kill(up.child("prefill")[0], signal.SIGKILL)
            t0 = time.monotonic()

            def wait() -> None:
                up.wait_for("prefill is serving again")
                back["prefill_serving_again_after_s"] = round(time.monotonic() - t0, 2)

            threading.Thread(target=wait, daemon=True).start()

        phases = [
            ("baseline", lambda: None),
            ("flushall", lambda: threading.Thread(target=storm, daemon=True).start()),
            ("frozen", freeze),
            ("killed", kill),
        ]
        for name, fault in phases:
            result = phase(name, up, want, args, fault)
            print(json.dumps(result | (back if name == "killed" else {})), flush=True)
            time.sleep(3)  # let the router see the prefill again
        print(json.dumps({"lamina_up": [ln.strip() for ln in up.log if "lamina up:" in ln]}))
    finally:
        up.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
