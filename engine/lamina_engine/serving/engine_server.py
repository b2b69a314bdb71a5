"""The HTTP server of an engine pod (`--role unified|prefill|decode`), FastAPI.

public port (clients; `api_key`):
    GET  /health                   200 ready; 503 while loading or draining (kubelet probes)
    GET  /v1/models                the served model
    POST /v1/completions           OpenAI; SSE when stream=true
    POST /v1/chat/completions      OpenAI; SSE when stream=true
    GET  /metrics                  Prometheus
internal port (the router and the operator; `internal_key`; serving/internal_app.py):
    POST /v1/internal/generate     the router's PreparedRequest (token ids, SamplingParams)
    POST /v1/internal/prefill      prefill role: a PreparedRequest's prompt computed and its KV
                                   shipped; answers with a report
    GET  /v1/internal/load         what the router picks by (KV utilisation, batch, role)
    POST /v1/internal/kv_abort     the router's notice that a handle's prefill failed
    POST|GET|DELETE /v1/admin/drain  drain, its state, undrain
A decode pod given a KV handle checks it against the prompt (serving/kv_handles.py), loads that
prompt's KV group by group as it arrives (bounded by one deadline; serving/kv_loading.py) and
decodes from it; on any failure it recomputes the prompt (lamina_kv_fallback_total). Shipped KV
enters the prefix cache only under a verified handle.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from contextlib import aclosing, asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from lamina_engine.kv_export import KVExport
from lamina_engine.request_output import RequestOutput
from lamina_engine.serving import kv_shipping
from lamina_engine.serving.async_engine import AsyncEngine, RequestFailed
from lamina_engine.serving.config import ServeConfig
from lamina_engine.serving.http_limits import check_prompt_chars, client_gone
from lamina_engine.serving.internal_app import internal_app
from lamina_engine.serving.kv_handles import Verdict, check_id, verify
from lamina_engine.serving.metrics import ServerMetrics
from lamina_engine.serving.openai_app import openai_app
from lamina_engine.serving.prefill_shipper import PrefillShipper
from lamina_engine.serving.prepared_request import PreparedRequest, check_fits, prepare
from lamina_engine.serving.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    OpenAIError,
    error_body,
)
from lamina_engine.serving.responses import SSE_DONE, ResponseBuilder, sse
from lamina_engine.serving.shipped_kv import ShippedKV
from lamina_engine.transfer import KVTransferError

log = logging.getLogger(__name__)


class EngineServer:
    """One engine pod. `engine_factory()` builds the Engine (slow: run off the event loop)."""

    def __init__(self, config: ServeConfig, engine_factory, local_store=None) -> None:
        self.config = config
        self.metrics = ServerMetrics(config.role)
        self.engine_factory = engine_factory
        self.local_store = local_store
        self.async_engine: AsyncEngine | None = None
        self.transport = None
        self.shipper: PrefillShipper | None = None
        self.kv_export: KVExport | None = None  # prefill role: plugged into the engine
        self.draining = False
        self.exiting = False  # told to exit (SIGTERM): the drain cannot be undone
        self.load_error: str | None = None
        # KV handles whose prefill failed (router's notice) -> monotonic time; waiters' events
        self._kv_aborted: dict[str, float] = {}
        self._kv_waiters: dict[str, asyncio.Event] = {}
        self.shipped = ShippedKV(config.kv_ttl_seconds)  # prefill role: KV not yet read
        if config.role in ("prefill", "decode") and config.internal_key is None:
            log.warning(
                "LAMINA_INTERNAL_KEY is not set: the internal port %s is open to anyone who "
                "reaches it, and KV handles cannot be verified, so shipped KV never enters "
                "this pod's prefix cache", config.internal_port_or_default,
            )  # fmt: skip
        self.app = self._build()
        self.internal_app = internal_app("Lamina engine", self, self.metrics)
        self.internal_app.post("/v1/internal/generate")(self.generate)
        self.internal_app.post("/v1/internal/prefill")(self.prefill)
        self.internal_app.get("/v1/internal/load")(self.load)
        self.internal_app.post("/v1/internal/kv_abort")(self.kv_abort)

    @property
    def ready(self) -> bool:
        return self.async_engine is not None and not self.draining

    async def _load(self) -> None:
        try:
            engine = await asyncio.to_thread(self.engine_factory)
            if self.config.role in ("prefill", "decode"):
                self.transport = kv_shipping.make_transport(self.config, self.local_store)
            ae = AsyncEngine(engine, self.metrics)
            if self.config.role == "prefill":
                mc = engine.model.config
                self.shipper = PrefillShipper(
                    self.transport, self.metrics, mc.num_kv_heads, mc.head_dim
                )
                self.kv_export = KVExport(self.shipper.ship, self.config.engine.layered_max_groups)
                engine.connect_kv_export(self.kv_export)
            ae.start()
            self.async_engine = ae
        except Exception as exc:  # reported by /health; the pod's probe fails and restarts it
            log.exception("engine failed to load")
            self.load_error = f"{type(exc).__name__}: {exc}"

    def _build(self) -> FastAPI:
        @asynccontextmanager
        async def lifespan(_: FastAPI):
            task = asyncio.create_task(self._load())
            yield
            self.draining = True
            task.cancel()
            if self.async_engine is not None:
                self.async_engine.shutdown()
            if self.transport is not None:
                await self.transport.close()

        return openai_app("Lamina engine", lifespan, self, self.metrics)

    # ------------------------------------------------------------------ small endpoints
    async def health(self) -> JSONResponse:
        if self.load_error:
            return JSONResponse(error_body(503, f"engine failed: {self.load_error}"), 503)
        if self.async_engine is None:
            return JSONResponse(error_body(503, "loading the model"), 503)
        if self.draining:
            return JSONResponse(error_body(503, "draining"), 503)
        return JSONResponse({"status": "ok", "role": self.config.role})

    async def live(self) -> JSONResponse:
        """Liveness (the kubelet restarts the container on 503): the process answers and the
        engine did not fail. Loading and draining are alive: a drain may outlast the liveness
        probe's patience, and /health (readiness) already takes the pod out of the Service."""
        if self.load_error:
            return JSONResponse(error_body(503, f"engine failed: {self.load_error}"), 503)
        if self.async_engine is not None and not self.async_engine.alive and not self.draining:
            return JSONResponse(error_body(503, "the engine thread has stopped"), 503)
        return JSONResponse({"status": "alive"})

    async def models(self) -> dict:
        return {
            "object": "list",
            "data": [{"id": self.config.model_name, "object": "model", "owned_by": "lamina",
                      "created": 0, "root": self.config.model}],
        }  # fmt: skip

    async def load(self) -> dict:
        body = {"role": self.config.role, "ready": self.ready, "draining": self.draining}
        if self.async_engine is not None:
            body.update(self.async_engine.load())
        return body

    async def drain_report(self) -> dict:
        """The drain state (internal_app.py): requests in flight and KV transfers pending."""
        n = self.async_engine.num_in_flight if self.async_engine else 0
        # kv_pending: a decode pod's KV loads in progress, a prefill pod's KV not yet read
        kv = len(self._kv_waiters) + await self.shipped.pending(self.transport)
        return {"draining": self.draining, "in_flight": n, "kv_pending": kv}

    # ------------------------------------------------------------------ requests
    def _check_serving(self, model: str) -> AsyncEngine:
        if self.draining:
            raise OpenAIError(503, "this server is draining; retry on another", "unavailable")
        if self.async_engine is None:
            raise OpenAIError(503, "the model is still loading; retry shortly", "unavailable")
        if model != self.config.model_name:
            raise OpenAIError(
                404, f"The model `{model}` does not exist; this server serves "
                f"`{self.config.model_name}`", "not_found_error", "model", "model_not_found",
            )  # fmt: skip
        return self.async_engine

    async def completions(self, req: CompletionRequest, request: Request):
        ae = self._check_serving(req.model)
        return await self._serve(await self._prepare("completions", req, ae), request)

    async def chat(self, req: ChatCompletionRequest, request: Request):
        ae = self._check_serving(req.model)
        return await self._serve(await self._prepare("chat", req, ae), request)

    async def _prepare(self, kind, req, ae: AsyncEngine) -> PreparedRequest:
        """Tokenize a client's request, bounded first and off the event loop (seconds per MB)
        so /health and other streams go on meanwhile."""
        check_prompt_chars(req, self.config.max_prompt_chars)
        return await asyncio.to_thread(prepare, kind, req, ae.engine.tokenizer)

    async def generate(self, body: dict, request: Request):
        """The router prepared the request already: serve it as it is (its prompt checked
        against this engine first; a KV handle against the prompt)."""
        prepared = PreparedRequest.from_wire(body)
        ae = self._check_serving(prepared.model)
        check_fits(prepared, ae.engine.max_model_len, ae.engine.model.config.vocab_size)
        verdict = None
        if prepared.kv_handle is not None:
            verdict = verify(self.config.internal_key, prepared.kv_handle, prepared.prompt_ids,
                             self.config.model_name)  # fmt: skip
        return await self._serve(prepared, request, verdict)

    async def _serve(self, req: PreparedRequest, request: Request, verdict: Verdict | None = None):
        ae = self.async_engine
        prefix = "cmpl" if req.kind == "completions" else "chatcmpl"
        rid = f"{prefix}-{uuid.uuid4().hex}"
        kv = None
        if verdict is not None and self.transport is not None:
            kv = self._kv_groups(req.kv_handle, len(req.prompt_ids))
        # shipped KV enters the prefix cache only when its handle verified
        cacheable = verdict is Verdict.VERIFIED
        stream = ae.generate(rid, req.prompt_ids, req.params, kv, kv_cacheable=cacheable)
        try:  # with shipped KV, the first output waits for the last group to load
            first = await self._next(stream, request)
        except RequestFailed as exc:
            raise OpenAIError(400 if exc.invalid else 500, str(exc)) from None
        out = RequestOutput(rid, None, req.prompt_ids)  # rebuilt here from the deltas
        builder = ResponseBuilder(req.kind, rid, self.config.model_name, ae.engine.tokenizer)
        builder.return_token_ids = req.return_token_ids
        if req.stream:
            return StreamingResponse(
                self._sse(builder, out, first, stream, req.include_usage),
                media_type="text/event-stream",
            )
        return builder.full(await self._collect(out, first, stream, request))

    async def _next(self, stream, request: Request):
        """The stream's next output; a client that disconnects meanwhile aborts the request
        (the stream is closed when this raises OpenAIError 499)."""
        nxt = asyncio.ensure_future(anext(stream))
        while not nxt.done():
            await asyncio.wait({nxt}, timeout=0.5)
            if not nxt.done() and await request.is_disconnected():
                nxt.cancel()
                await asyncio.wait({nxt})  # the stream's cleanup (abort) runs before we go
                raise OpenAIError(499, "client disconnected")
        return nxt.result()

    async def _collect(self, out: RequestOutput, delta, stream, request: Request):
        """`out` with every delta to the end; a client that disconnects meanwhile aborts."""
        # _next looks only while one delta is slow; this notices between fast deltas too
        gone = asyncio.ensure_future(client_gone(request))
        try:
            out.add(delta)
            while not delta.finished:
                if gone.done():
                    raise OpenAIError(499, "client disconnected")
                delta = await self._next(stream, request)
                out.add(delta)
            return out
        except RequestFailed as exc:  # this request failed in the engine; others go on
            kind = "invalid_request_error" if exc.invalid else "server_error"
            raise OpenAIError(400 if exc.invalid else 500, str(exc), kind) from None
        finally:
            gone.cancel()
            await stream.aclose()

    async def _sse(self, builder: ResponseBuilder, out, delta, stream, include_usage: bool):
        try:
            head = builder.first_chunk()
            if head:
                yield head
            while True:
                out.add(delta)  # for the usage chunk
                chunk = builder.delta_chunk(delta)
                if chunk:
                    yield chunk
                if delta.finished:
                    break
                delta = await anext(stream)
            if include_usage:
                yield builder.usage_chunk(out)
            yield SSE_DONE
        except RequestFailed as exc:  # failed in the engine: an error event, never [DONE]
            yield sse(error_body(500, str(exc)))
        finally:
            await stream.aclose()

    async def _kv_groups(self, handle: str, num_prompt_tokens: int):
        """The prompt KV shipped under `handle`, one checked group at a time as each arrives
        (kv_shipping.receive), cut short by the router's notice that its prefill failed; its
        objects are deleted from the store afterwards, whatever happened."""
        aborted = self._kv_waiters.setdefault(handle, asyncio.Event())
        if handle in self._kv_aborted:
            aborted.set()
        engine = self.async_engine.engine
        groups = kv_shipping.receive(
            self.transport, handle, num_prompt_tokens, engine.kv_dtype,
            self.config.kv_wait_seconds, getattr(engine, "speed", None), aborted,
        )  # fmt: skip
        try:
            async with aclosing(groups):
                async for group in groups:
                    yield group
        finally:
            self._kv_waiters.pop(handle, None)
            try:
                await self.transport.delete(handle)
            except (KVTransferError, ValueError):
                pass  # the objects expire by TTL anyway

    async def kv_abort(self, body: dict) -> dict:
        """The router saw this handle's prefill fail: stop waiting for its KV, recompute."""
        handle = check_id(body.get("request_id"), "request_id")
        now = time.monotonic()
        ttl = self.config.kv_wait_seconds * 2
        for h in [h for h, t in self._kv_aborted.items() if now - t > ttl]:
            del self._kv_aborted[h]
        self._kv_aborted[handle] = now
        waiter = self._kv_waiters.get(handle)
        if waiter is not None:
            waiter.set()
        return {"request_id": handle, "waiting": waiter is not None}

    async def prefill(self, body: dict) -> dict:
        """A PreparedRequest with a KV handle: compute its prompt, ship the KV under it."""
        if self.shipper is None:
            raise OpenAIError(400, f"this is a {self.config.role} server, not a prefill server")
        req = PreparedRequest.from_wire(body)
        if req.kv_handle is None:
            raise OpenAIError(400, "kv_handle is required", param="kv_handle")
        ae = self._check_serving(req.model)
        check_fits(req, ae.engine.max_model_len, ae.engine.model.config.vocab_size)
        # KV is published under a handle only for the prompt it was minted for
        verify(self.config.internal_key, req.kv_handle, req.prompt_ids, self.config.model_name)
        params = dataclasses.replace(req.params, max_tokens=1, min_tokens=0, logprobs=None)
        report = await self.shipper.run(ae, req.kv_handle, req.prompt_ids, params)
        self.shipped.add(req.kv_handle)
        return report
