"""`lamina serve`: build the server of a role and run its two ports (serving/listeners.py).

SIGTERM (Kubernetes stopping the pod) drains: /health turns 503 and new requests are refused at
once, requests in flight finish (up to `DRAIN_TIMEOUT_S`), then the process exits.
"""

from __future__ import annotations

import argparse
import logging
import threading

from lamina_engine.serving.config import ServeConfig, config_from
from lamina_engine.serving.listeners import DRAIN_TIMEOUT_S, Listeners

__all__ = ["DRAIN_TIMEOUT_S", "build_server", "cmd_serve", "run_in_thread"]

log = logging.getLogger(__name__)


def build_server(config: ServeConfig, local_store=None):
    """The server object of `config.role` (it has `.app`, `.internal_app` and `.draining`)."""
    if config.role == "router":
        from lamina_engine.serving.router_server import RouterServer

        return RouterServer(config)
    from lamina_engine.engine import Engine
    from lamina_engine.serving.engine_server import EngineServer

    return EngineServer(config, lambda: Engine(config.engine), local_store=local_store)


def run_in_thread(server, host: str = "127.0.0.1", port: int = 0, internal_port: int = 0):
    """Start `server`'s two ports on a daemon thread (tests, `lamina up`); returns
    (Listeners, thread, public port); `Listeners.internal_port` is the internal one."""
    import time

    listeners = Listeners(server, host, port, internal_port)
    thread = threading.Thread(target=listeners.run, daemon=True)
    thread.start()
    while not listeners.started:
        if not thread.is_alive():
            raise RuntimeError(f"the {type(server).__name__} failed to start on {host}:{port}")
        time.sleep(0.01)
    return listeners, thread, listeners.port


def cmd_serve(args: argparse.Namespace) -> int:
    logging.getLogger("lamina_engine").setLevel(logging.INFO)
    config = config_from(args)
    server = build_server(config)
    internal = config.internal_port_or_default
    print(
        f"lamina serve: {config.role} for {config.model_name} on http://{config.host}:"
        f"{config.port} (internal: {internal})",
        flush=True,
    )
    Listeners(server, config.host, config.port, internal).run()
    return 0
