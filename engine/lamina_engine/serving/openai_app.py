"""The FastAPI app every Lamina server (engine pod, router) starts from.

The routes they share, and errors in OpenAI's shape: {"error": {message, type, param, code}}.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from lamina_engine.serving.auth import BearerKey
from lamina_engine.serving.http_limits import BodyLimit
from lamina_engine.serving.metrics import CONTENT_TYPE, ServerMetrics
from lamina_engine.serving.protocol import OpenAIError, error_body

OPEN_PATHS = frozenset({"/health", "/livez", "/metrics"})  # the kubelet's probes, Prometheus


def openai_app(title: str, lifespan, server, metrics: ServerMetrics) -> FastAPI:
    """The public app: GET /health, /livez, /v1/models and POST /v1/completions, /v1/chat/completions
    with `server`'s methods of those names, and GET /metrics. All but OPEN_PATHS need `api_key`
    when one is set; bodies over `max_request_bytes` are 413s. Nothing internal is here
    (serving/internal_app.py)."""
    app = FastAPI(title=title, lifespan=lifespan)
    metrics.instrument(app)
    install_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=server.config.max_request_bytes)
    app.add_middleware(
        BearerKey, key=server.config.api_key, setting="LAMINA_API_KEY", open_paths=OPEN_PATHS
    )
    app.get("/health")(server.health)  # readiness: 503 while loading, draining, failed
    app.get("/livez")(server.live)  # liveness: 503 only when the server must be restarted
    app.get("/v1/models")(server.models)
    app.post("/v1/completions")(server.completions)
    app.post("/v1/chat/completions")(server.chat)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    return app


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(OpenAIError)
    async def _openai(_: Request, exc: OpenAIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        unknown = [e for e in errors if e.get("type") == "extra_forbidden"]
        if unknown:  # name every one, so a client fixes them in one go
            names = [".".join(str(p) for p in e["loc"] if p != "body") for e in unknown]
            message = (
                f"unknown field(s) {', '.join(names)}: this server does not accept them; "
                "see the OpenAI API (and vLLM's extensions) for the fields it takes"
            )
            return JSONResponse(error_body(400, message, names[0]), status_code=400)
        first = errors[0] if errors else {}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        param = ".".join(loc) or None
        message = f"invalid request: {param or 'body'}: {first.get('msg', 'malformed JSON')}"
        return JSONResponse(error_body(400, message, param), status_code=400)

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse(error_body(exc.status_code, str(exc.detail)), exc.status_code)
