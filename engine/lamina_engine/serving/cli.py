"""`lamina serve`: build the server of a role and run it under uvicorn.

SIGTERM (Kubernetes stopping the pod) drains: /health turns 503 and new requests are refused at
once, requests in flight finish (up to `DRAIN_TIMEOUT_S`), then the process exits.
"""

from __future__ import annotations

import argparse
import logging
import threading

import uvicorn

from lamina_engine.serving.config import ServeConfig, config_from

DRAIN_TIMEOUT_S = 60

log = logging.getLogger(__name__)


def build_server(config: ServeConfig, local_store=None):
    """The server object of `config.role` (it has `.app` and `.draining`)."""
    if config.role == "router":
        from lamina_engine.serving.router_server import RouterServer

        return RouterServer(config)
    from lamina_engine.engine import Engine
    from lamina_engine.serving.engine_server import EngineServer

    return EngineServer(config, lambda: Engine(config.engine), local_store=local_store)


class DrainingServer(uvicorn.Server):
    """uvicorn.Server that marks the app draining on the first SIGTERM/SIGINT."""

    def __init__(self, config: uvicorn.Config, target) -> None:
        super().__init__(config)
        self.target = target

    def handle_exit(self, sig, frame) -> None:
        self.target.draining = True
        super().handle_exit(sig, frame)


def make_uvicorn(server, host: str, port: int) -> DrainingServer:
    from lamina_engine.serving.http_limits import read_timeout_protocol

    c = server.config
    cfg = uvicorn.Config(
        server.app,
        host=host,
        port=port,
        log_level="warning",
        timeout_graceful_shutdown=DRAIN_TIMEOUT_S,
        lifespan="on",
        http=read_timeout_protocol(c.request_read_timeout_seconds),
        timeout_keep_alive=c.timeout_keep_alive_seconds,
        h11_max_incomplete_event_size=c.h11_max_incomplete_event_size,
        limit_concurrency=c.limit_concurrency,
    )
    return DrainingServer(cfg, server)


def run_in_thread(server, host: str = "127.0.0.1", port: int = 0):
    """Start `server` on a daemon thread (tests, `lamina up`); returns (uvicorn, port)."""
    uv = make_uvicorn(server, host, port)
    uv.install_signal_handlers = lambda: None  # only the main thread may install them
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    import time

    while not uv.started:
        if not thread.is_alive():
            raise RuntimeError(f"the {type(server).__name__} failed to start on {host}:{port}")
        time.sleep(0.01)
    sock = uv.servers[0].sockets[0]
    return uv, thread, sock.getsockname()[1]


def cmd_serve(args: argparse.Namespace) -> int:
    logging.getLogger("lamina_engine").setLevel(logging.INFO)
    config = config_from(args)
    server = build_server(config)
    print(
        f"lamina serve: {config.role} for {config.model_name} on http://{config.host}:{config.port}",
        flush=True,
    )
    make_uvicorn(server, config.host, config.port).run()
    return 0
