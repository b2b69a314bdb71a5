"""lamina_http_requests_total: every response counted once, by route template and status, a
stream when it ends, an exception as the 500 Starlette answers with."""

from __future__ import annotations

import asyncio

import httpx
from fastapi import FastAPI
from fastapi.responses import JSONResponse, StreamingResponse

from lamina_engine.serving.metrics import ServerMetrics


def _app(metrics: ServerMetrics) -> FastAPI:
    app = FastAPI()
    metrics.instrument(app)

    @app.get("/items/{item}")
    async def item(item: str):
        if item == "missing":
            return JSONResponse({"error": "no such item"}, 404)
        if item == "boom":
            raise RuntimeError("engine step failed")
        return {"item": item}

    @app.get("/stream")
    async def stream():
        async def chunks():
            for i in range(3):
                yield f"data: {i}\n\n"

        return StreamingResponse(chunks(), media_type="text/event-stream")

    return app


def test_responses_are_counted_by_route_and_code():
    metrics = ServerMetrics("router")

    async def run() -> None:
        transport = httpx.ASGITransport(app=_app(metrics), raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            for path in ("/items/a", "/items/b", "/items/missing", "/items/boom", "/nowhere"):
                await client.get(path)
            r = await client.get("/stream")
            assert r.text.count("data:") == 3

    asyncio.run(run())

    def count(route: str, code: str) -> float:
        labels = {"role": "router", "route": route, "code": code}
        return metrics.registry.get_sample_value("lamina_http_requests_total", labels) or 0.0

    assert count("/items/{item}", "200") == 2  # the template, not the two paths
    assert count("/items/{item}", "404") == 1
    assert count("/items/{item}", "500") == 1
    assert count("unmatched", "404") == 1
    assert count("/stream", "200") == 1
