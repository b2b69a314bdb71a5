"""Listeners: a server's public and internal ports, two uvicorn servers in one event loop.

    public   (--port)           the OpenAI API, /health, /metrics      server.app
    internal (--internal-port)  /v1/internal/*, /v1/admin/drain         server.internal_app

The server's lifespan (model load, clients, shutdown) runs once around both, so in-flight
requests on either port finish before it ends. SIGTERM/SIGINT (Kubernetes stopping the pod)
drains: the server refuses new work and /health turns 503, both listeners close, requests in
flight finish (up to DRAIN_TIMEOUT_S), then the process exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading

import uvicorn

from lamina_engine.serving.http_limits import read_timeout_protocol

DRAIN_TIMEOUT_S = 60


class _Listener(uvicorn.Server):
    """One port. Signals are the pair's to handle (uvicorn's own would stop one port only)."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


class Listeners:
    """`server`'s two ports. run() blocks until both are closed; handle_exit() drains."""

    def __init__(self, server, host: str, port: int, internal_port: int) -> None:
        self.server = server
        self.public = _Listener(_config(server, server.app, host, port))
        self.internal = _Listener(_config(server, server.internal_app, host, internal_port))
        self._signals_seen: list[int] = []

    @property
    def started(self) -> bool:
        return self.public.started and self.internal.started

    @property
    def port(self) -> int:
        return self.public.servers[0].sockets[0].getsockname()[1]

    @property
    def internal_port(self) -> int:
        return self.internal.servers[0].sockets[0].getsockname()[1]

    @property
    def should_exit(self) -> bool:
        return self.public.should_exit or self.internal.should_exit

    @should_exit.setter
    def should_exit(self, value: bool) -> None:
        self.public.should_exit = self.internal.should_exit = value

    def handle_exit(self, sig, frame) -> None:
        """Drain and close both ports; a second SIGINT forces the exit."""
        if sig is not None:
            self._signals_seen.append(sig)
        self.server.draining = True
        self.server.exiting = True
        self.public.handle_exit(sig, frame)
        self.internal.handle_exit(sig, frame)

    def run(self) -> None:
        asyncio.run(self.serve())

    async def serve(self) -> None:
        app = self.server.app
        with self._signals():
            async with app.router.lifespan_context(app):
                tasks = [asyncio.create_task(s.serve()) for s in (self.internal, self.public)]
                try:  # one port closing (a bind failure, a stop) closes the other
                    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    self.server.exiting = True
                    self.should_exit = True
                    await asyncio.gather(*tasks, return_exceptions=True)
                for task in tasks:  # SystemExit of a port that could not bind
                    if task.exception() is not None:
                        raise task.exception()

    @contextlib.contextmanager
    def _signals(self):
        if threading.current_thread() is not threading.main_thread():
            yield  # only the main thread may install handlers (tests, `lamina up` threads)
            return
        sigs = (signal.SIGINT, signal.SIGTERM)
        original = {sig: signal.signal(sig, self.handle_exit) for sig in sigs}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)
        # as uvicorn does: the signal's own effect once the drain is done (SIGTERM ends the
        # process at once, without waiting for the interpreter's teardown)
        for sig in reversed(self._signals_seen):
            signal.raise_signal(sig)


def _config(server, app, host: str, port: int) -> uvicorn.Config:
    c = server.config
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        timeout_graceful_shutdown=DRAIN_TIMEOUT_S,
        lifespan="off",  # Listeners runs the lifespan once around both ports
        http=read_timeout_protocol(c.request_read_timeout_seconds),
        timeout_keep_alive=c.timeout_keep_alive_seconds,
        h11_max_incomplete_event_size=c.h11_max_incomplete_event_size,
        limit_concurrency=c.limit_concurrency,
    )
