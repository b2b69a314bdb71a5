"""The internal app: what Lamina's own pods (and the operator) call, on the internal port only.

    POST   /v1/admin/drain   stop taking new requests -> {"draining": true,  in_flight, kv_pending}
    GET    /v1/admin/drain   the drain state          -> {"draining": bool,  in_flight, kv_pending}
    DELETE /v1/admin/drain   take new requests again  -> {"draining": false, in_flight, kv_pending}
    + the routes a server adds (an engine pod's /v1/internal/*)

in_flight: requests not finished; kv_pending: KV transfers this server still drives (see each
server's drain_report). Every request needs the deployment's internal key when one is set
(serving/auth.py). Draining is reversible until the process is told to exit (SIGTERM): then
DELETE is a 409.
"""

from __future__ import annotations

from fastapi import FastAPI

from lamina_engine.serving.auth import BearerKey
from lamina_engine.serving.http_limits import BodyLimit
from lamina_engine.serving.metrics import ServerMetrics
from lamina_engine.serving.openai_app import install_error_handlers
from lamina_engine.serving.protocol import OpenAIError

DRAIN_PATH = "/v1/admin/drain"


def internal_app(title: str, server, metrics: ServerMetrics) -> FastAPI:
    """The internal app of `server` (it has .config, .draining, .exiting, drain_report())."""
    app = FastAPI(title=f"{title} (internal)")
    metrics.instrument(app)
    install_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=server.config.max_request_bytes)
    app.add_middleware(BearerKey, key=server.config.internal_key, setting="LAMINA_INTERNAL_KEY")

    @app.post(DRAIN_PATH)
    async def drain() -> dict:
        server.draining = True
        return await server.drain_report()

    @app.get(DRAIN_PATH)
    async def drain_state() -> dict:
        return await server.drain_report()

    @app.delete(DRAIN_PATH)
    async def undrain() -> dict:
        if server.exiting:
            raise OpenAIError(409, "this server is shutting down (SIGTERM): it cannot undrain")
        server.draining = False
        return await server.drain_report()

    return app
