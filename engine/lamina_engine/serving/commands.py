"""`lamina serve` and `lamina up` as argparse subcommands; heavy imports wait until they run."""

from __future__ import annotations

import argparse

from lamina_engine.serving.config import add_serve_args


def _serve(args: argparse.Namespace) -> int:
    from lamina_engine.serving.cli import cmd_serve

    return cmd_serve(args)


def _up(args: argparse.Namespace) -> int:
    from lamina_engine.up import cmd_up

    return cmd_up(args)


def register(sub) -> None:
    """Add `serve` and `up` to the `lamina` subparsers."""
    s = sub.add_parser("serve", help="run an OpenAI-compatible server (engine role or router)")
    add_serve_args(s)
    s.set_defaults(func=_serve)
    u = sub.add_parser("up", help="run router + prefill + decode locally on the demo model")
    u.add_argument("--model", help="checkpoint folder (default: the built-in demo model)")
    u.add_argument("--port", type=int, default=8000, help="the router's port")
    u.add_argument("--host", default="127.0.0.1")
    u.add_argument(
        "--kv-backend", choices=["auto", "redis", "unified"], default="auto",
        help="auto: redis if redis-server is installed, else one unified engine behind the router",
    )  # fmt: skip
    u.set_defaults(func=_up)
