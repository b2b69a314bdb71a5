"""`lamina up`: the disaggregated stack on this machine, one process per pod.

    redis-server (free loopback port)  <- KV of each prompt, prefill -> decode
    lamina serve --role prefill        (free port)
    lamina serve --role decode         (free port)
    lamina serve --role router         (--port, default 8000): the URL to use

Without `redis-server` installed (or with --kv-backend unified) the router fronts one unified
engine instead: the in-process `local` KV transport cannot cross process boundaries. Ctrl-C or
SIGTERM stops everything, newest first.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import socket
import subprocess
import sys
import time

import httpx

READY_TIMEOUT_S = 300.0
NAME = "lamina-demo"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_args(role: str, port: int, model: str | None, *extra: str, host="127.0.0.1"):
    """The `lamina serve` command line (after `lamina`) of one process of the stack."""
    args = ["serve", "--role", role, "--host", host, "--port", str(port),
            "--served-model-name", NAME]  # fmt: skip
    return args + (["--model", model] if model else []) + list(extra)


def kv_args(redis_port: int) -> list[str]:
    """Flags of the prefill and decode processes: how KV travels between them."""
    return ["--kv-backend", "redis", "--kv-redis-url", f"redis://127.0.0.1:{redis_port}/0"]


class Stack:
    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def spawn(self, name: str, args: list[str], quiet: bool = False) -> None:
        out = subprocess.DEVNULL if quiet else None
        self.procs.append((name, subprocess.Popen(args, stdout=out)))

    def serve(self, role: str, port: int, model: str | None, *extra: str, host="127.0.0.1"):
        args = serve_args(role, port, model, *extra, host=host)
        self.spawn(role, [sys.executable, "-m", "lamina_engine.cli", *args])

    def dead(self) -> str | None:
        for name, proc in self.procs:
            if proc.poll() is not None:
                return f"{name} exited with status {proc.returncode}"
        return None

    def stop(self, timeout_s: float = 20.0) -> None:
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        end = time.monotonic() + timeout_s
        for _, proc in reversed(self.procs):
            try:
                proc.wait(max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_ready(stack: Stack, url: str) -> None:
    end = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < end:
        problem = stack.dead()
        if problem:
            raise RuntimeError(f"lamina up: {problem}; see its log above")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"lamina up: the router at {url} was not ready in {READY_TIMEOUT_S:.0f} s")


def cmd_up(args: argparse.Namespace) -> int:
    redis = shutil.which("redis-server")
    mode = args.kv_backend
    if mode == "auto":
        mode = "redis" if redis else "unified"
    if mode == "redis" and not redis:
        print("lamina up: redis-server is not installed (apt-get install redis-server)")
        return 2
    stack = Stack()

    def on_signal(signum, frame) -> None:
        raise KeyboardInterrupt  # one path out: the finally below stops the children

    signal.signal(signal.SIGTERM, on_signal)
    url = f"http://{args.host}:{args.port}"
    try:
        if mode == "redis":
            rport = _free_port()
            stack.spawn("redis", [redis, "--port", str(rport), "--bind", "127.0.0.1",
                                  "--save", "", "--appendonly", "no"], quiet=True)  # fmt: skip
            kv = kv_args(rport)
            pport, dport = _free_port(), _free_port()
            stack.serve("prefill", pport, args.model, *kv)
            stack.serve("decode", dport, args.model, *kv)
            services = ["--prefill-service", f"127.0.0.1:{pport}",
                        "--decode-service", f"127.0.0.1:{dport}"]  # fmt: skip
        else:
            uport = _free_port()
            stack.serve("unified", uport, args.model)
            services = ["--decode-service", f"127.0.0.1:{uport}"]
        stack.serve("router", args.port, args.model, *services, host=args.host)
        _wait_ready(stack, url)
        shape = "router + prefill + decode (KV over Redis)" if mode == "redis" else (
            "router + one unified engine (no redis-server: KV shipping needs it)")  # fmt: skip
        print(f"\nLamina is up: {shape}\n  {url}/v1\n\nTry:\n  curl -s {url}/v1/completions "
              f"-H 'Content-Type: application/json' -d '{{\"model\": \"{NAME}\", \"prompt\": "
              f"\"Once upon a time\", \"max_tokens\": 32}}'\n\nCtrl-C stops it.", flush=True)  # fmt: skip
        while True:
            problem = stack.dead()
            if problem:
                print(f"lamina up: {problem}; stopping", file=sys.stderr)
                return 1
            time.sleep(0.5)
    except KeyboardInterrupt:
        return 0
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 1
    finally:
        print("lamina up: stopping", file=sys.stderr, flush=True)
        stack.stop()
