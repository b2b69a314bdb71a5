"""`lamina up`: the disaggregated stack on this machine, one process per pod.

    redis-server (free loopback port)  <- KV of each prompt, prefill -> decode
    lamina serve --role prefill        (free ports: public, internal)
    lamina serve --role decode         (free ports: public, internal)
    lamina serve --role router         (--port, default 8000: the URL to use; free internal)

Without `redis-server` installed (or with --kv-backend unified) the router fronts one unified
engine instead: the in-process `local` KV transport cannot cross process boundaries. All of
them share one internal key (LAMINA_INTERNAL_KEY, new each run) and the router reaches the
engines on their internal ports. The processes are supervised (supervisor.py): one that
crashes is restarted with backoff while the others serve (decode recomputes prompts while
prefill is down); "Lamina is up" is printed once every process serves. Ctrl-C or SIGTERM
stops them all.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import socket
import sys

from lamina_engine.supervisor import Child, ChildFailed, PortInUse, Supervisor

READY_TIMEOUT_S = 300.0
NAME = "lamina-demo"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _has_internal_port() -> bool:
    """Whether `lamina serve` takes --internal-port (the internal/admin port contract)."""
    from lamina_engine.serving.config import ServeConfig

    return "internal_port" in ServeConfig.model_fields


def serve_args(role: str, port: int, model: str | None, *extra: str, host="127.0.0.1"):
    """The `lamina serve` command line (after `lamina`) of one process of the stack."""
    args = ["serve", "--role", role, "--host", host, "--port", str(port),
            "--served-model-name", NAME]  # fmt: skip
    return args + (["--model", model] if model else []) + list(extra)


def kv_args(redis_port: int) -> list[str]:
    """Flags of the prefill and decode processes: how KV travels between them."""
    return ["--kv-backend", "redis", "--kv-redis-url", f"redis://127.0.0.1:{redis_port}/0"]


class Plan:
    """The children of one `lamina up`, with their ports and the shared environment."""

    def __init__(self, args: argparse.Namespace, env: dict[str, str]) -> None:
        self.args, self.env, self.children = args, env, []
        self.internal = _has_internal_port()

    def serve(self, role: str, port: int, *extra: str, host="127.0.0.1") -> str:
        """Add a `lamina serve` child; returns the HOST:PORT the router reaches it on."""
        ports, flags = [port], list(extra)
        if self.internal:
            internal = _free_port()
            ports.append(internal)
            flags += ["--internal-port", str(internal)]
        argv = [sys.executable, "-m", "lamina_engine.cli",
                *serve_args(role, port, self.args.model, *flags, host=host)]  # fmt: skip
        health = f"http://{host}:{port}/health"
        self.children.append(Child(role, argv, tuple(ports), health, host, self.env))
        return f"127.0.0.1:{ports[-1]}"

    def redis(self, redis: str, port: int) -> None:
        argv = [redis, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no"]  # fmt: skip
        self.children.append(Child("redis", argv, (port,), None, env=self.env, quiet=True))


def plan(args: argparse.Namespace, mode: str, redis: str | None) -> Plan:
    env = dict(os.environ)
    env["LAMINA_INTERNAL_KEY"] = secrets.token_urlsafe(32)  # this run's pods only
    p = Plan(args, env)
    if mode == "redis":
        rport = _free_port()
        p.redis(redis, rport)
        kv = kv_args(rport)
        prefill = p.serve("prefill", _free_port(), *kv)
        decode = p.serve("decode", _free_port(), *kv)
        services = ["--prefill-service", prefill, "--decode-service", decode]
    else:
        services = ["--decode-service", p.serve("unified", _free_port())]
    p.serve("router", args.port, *services, host=args.host)
    return p


def cmd_up(args: argparse.Namespace) -> int:
    redis = shutil.which("redis-server")
    mode = args.kv_backend
    if mode == "auto":
        mode = "redis" if redis else "unified"
    if mode == "redis" and not redis:
        print("lamina up: redis-server is not installed (apt-get install redis-server)")
        return 2
    sup = Supervisor(plan(args, mode, redis).children)

    def on_signal(signum, frame) -> None:
        raise KeyboardInterrupt  # one path out: the finally below stops the children

    signal.signal(signal.SIGTERM, on_signal)
    url = f"http://{args.host}:{args.port}"
    try:
        sup.start()
        sup.wait_ready(READY_TIMEOUT_S)
        shape = "router + prefill + decode (KV over Redis)" if mode == "redis" else (
            "router + one unified engine (no redis-server: KV shipping needs it)")  # fmt: skip
        print(f"\nLamina is up: {shape}\n  {url}/v1\n\nTry:\n  curl -s {url}/v1/completions "
              f"-H 'Content-Type: application/json' -d '{{\"model\": \"{NAME}\", \"prompt\": "
              f"\"Once upon a time\", \"max_tokens\": 32}}'\n\nCtrl-C stops it.", flush=True)  # fmt: skip
        sup.watch()
    except KeyboardInterrupt:
        return 0
    except PortInUse as exc:
        print(f"lamina up: {exc}", file=sys.stderr)
        return 2
    except ChildFailed as exc:
        print(f"lamina up: {exc}", file=sys.stderr)
        return 1
    finally:
        print("lamina up: stopping", file=sys.stderr, flush=True)
        sup.stop()
    return 0
