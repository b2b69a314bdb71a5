"""The router (`--role router`): the OpenAI front door in front of prefill and decode pods.

Per request: parse, tokenize and validate once (serving/prepared_request.py; the router loads
the model's tokenizer and config.json, never weights) and forward the token ids and
SamplingParams, so the pods do not repeat that work; pick a decode pod (least KV utilisation) and, when the prompt is long enough and a prefill pod
is ready, a prefill pod (prefix match, then least outstanding FLOPs). Disaggregated: the prefill
pod gets the request with a KV handle and ships the prompt's KV; at the same time the decode pod
gets it with the same handle, waits for the KV and streams tokens back through the router.
Otherwise the decode (or unified) pod serves it whole. A connection failure to a pod marks it
down and the request goes to another once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response, StreamingResponse

from lamina_engine.core.block_manager import block_hashes
from lamina_engine.serving.backends import BackendPool
from lamina_engine.serving.config import ServeConfig
from lamina_engine.serving.metrics import ServerMetrics
from lamina_engine.serving.openai_app import openai_app
from lamina_engine.serving.pod_pickers import BackendState, DecodePicker, PrefillPicker
from lamina_engine.serving.prepared_request import Kind, prepare
from lamina_engine.serving.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    OpenAIError,
    error_body,
)

log = logging.getLogger(__name__)
PREFILL_TIMEOUT_S = 600.0
GENERATE_PATH = "/v1/internal/generate"  # a pod's endpoint for prepared requests


class RouterServer:
    def __init__(self, config: ServeConfig) -> None:
        from lamina_engine.tokenizer import Tokenizer

        self.config = config
        self.metrics = ServerMetrics("router")
        model_cfg = json.loads((Path(config.model) / "config.json").read_text())
        self.tokenizer = Tokenizer.maybe_from_pretrained(config.model)
        self.prefill_picker = PrefillPicker(
            config.prefill_picker, model_cfg, config.engine.block_size
        )
        self.decode_picker = DecodePicker(config.decode_picker)
        self.pool = BackendPool(
            config.prefill_service,
            config.decode_service,
            config.backend_poll_seconds,
            config.load_decay_seconds,
        )
        self.metrics.watch_router(self.pool)
        self.draining = False
        self.client: httpx.AsyncClient | None = None
        self._tasks: set[asyncio.Task] = set()
        self.app = self._build()

    def _build(self) -> FastAPI:
        @asynccontextmanager
        async def lifespan(_: FastAPI):
            self.client = httpx.AsyncClient(timeout=httpx.Timeout(None, connect=2.0))
            self.pool.start()
            yield
            await self.pool.close()
            await self.client.aclose()

        return openai_app("Lamina router", lifespan, self, self.metrics)

    # ------------------------------------------------------------------ small endpoints
    def _decoders(self) -> list[BackendState]:
        return self.pool.available("decode") + self.pool.available("unified")

    async def health(self) -> JSONResponse:
        prefill, decode = self.pool.available("prefill"), self.pool.available("decode")
        unified = self.pool.available("unified")
        for kind, pods in (("prefill", prefill), ("decode", decode), ("unified", unified)):
            self.metrics.backends_ready.labels("router", kind).set(len(pods))
        if self.draining:
            return JSONResponse(error_body(503, "draining"), 503)
        if (prefill and decode) or unified:
            return JSONResponse({"status": "ok", "prefill": len(prefill), "decode": len(decode),
                                 "unified": len(unified)})  # fmt: skip
        msg = (f"not ready: {len(prefill)} prefill, {len(decode)} decode, {len(unified)} unified "
               "backends ready; need a prefill and a decode pod, or a unified one")  # fmt: skip
        return JSONResponse(error_body(503, msg), 503)

    async def models(self) -> dict:
        return {"object": "list", "data": [{"id": self.config.model_name, "object": "model",
                                            "owned_by": "lamina", "created": 0}]}  # fmt: skip

    async def drain(self) -> dict:
        self.draining = True
        return {"draining": True}

    # ------------------------------------------------------------------ requests
    async def completions(self, req: CompletionRequest):
        return await self._route("completions", req)

    async def chat(self, req: ChatCompletionRequest):
        return await self._route("chat", req)

    async def _route(self, kind: Kind, req: CompletionRequest | ChatCompletionRequest):
        if self.draining:
            raise OpenAIError(503, "the router is draining; retry shortly", "unavailable")
        if req.model != self.config.model_name:
            raise OpenAIError(
                404, f"The model `{req.model}` does not exist; this router serves "
                f"`{self.config.model_name}`", "not_found_error", "model", "model_not_found",
            )  # fmt: skip
        if req.n != 1:
            raise OpenAIError(400, f"n={req.n} is not supported; only n=1", param="n")
        prepared = prepare(kind, req, self.tokenizer)  # the pods get token ids from here on
        ids = prepared.prompt_ids
        decoders = self._decoders()
        if not decoders:
            raise OpenAIError(503, "no decode or unified backend is ready", "unavailable")
        decode = self.decode_picker.pick(decoders)
        prefills = self.pool.available("prefill")
        disaggregate = (
            decode.role == "decode"
            and prefills
            and len(ids) >= max(1, self.config.disaggregation_min_prompt_tokens)
            and prepared.params.logprobs is None  # logprobs are not shipped with the KV
        )
        body = prepared.to_wire()
        if disaggregate:
            body["kv_handle"] = f"kv-{uuid.uuid4().hex}"
            hashes = block_hashes(ids, self.config.engine.block_size)
            pod, flops = self.prefill_picker.pick(prefills, hashes, len(ids))
            self._spawn(self._prefill(pod, decode, flops, hashes, body))
        self.metrics.router_requests.labels("router", "disagg" if disaggregate else "direct").inc()
        t0 = time.perf_counter()
        return await self._proxy(decode, GENERATE_PATH, body, req.stream, decoders, t0)

    def _spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _prefill(self, pod, decode, flops, hashes, body: dict) -> None:
        """Run the prompt on `pod`. On failure tell `decode` to stop waiting for the KV and
        recompute (if that notice is lost too, its KV deadline does the same, later)."""
        pod.load.add(flops)
        pod.in_flight += 1
        ok = False
        try:
            r = await self.client.post(
                f"{pod.url}/v1/internal/prefill",
                json=body,
                timeout=PREFILL_TIMEOUT_S,
            )
            ok = r.status_code == 200
            if ok:
                pod.remember(hashes)
            else:
                log.warning("prefill on %s failed: %s %s", pod.address, r.status_code, r.text)
        except httpx.HTTPError as exc:
            log.warning("prefill on %s failed: %s", pod.address, exc)
            self.pool.mark_down(pod)
        finally:
            pod.in_flight -= 1
            pod.load.add(-flops)
        if not ok:
            handle = body["kv_handle"]
            try:
                await self.client.post(
                    f"{decode.url}/v1/internal/kv_abort", json={"request_id": handle}, timeout=5
                )
            except httpx.HTTPError as exc:
                log.warning("could not tell %s to recompute %s: %s", decode.address, handle, exc)

    async def _proxy(self, pod, path: str, body: dict, stream: bool, pods, t0: float):
        """Forward to `pod` (once more to another on a connection failure) and relay."""
        for attempt in range(2):
            pod.in_flight += 1
            try:
                upstream = await self.client.send(
                    self.client.build_request("POST", f"{pod.url}{path}", json=body), stream=True
                )
            except httpx.TransportError as exc:
                pod.in_flight -= 1
                self.pool.mark_down(pod)
                others = [p for p in pods if p is not pod and p.available]
                if attempt == 1 or not others:
                    raise OpenAIError(502, f"backend {pod.address} unreachable: {exc}",
                                      "server_error") from None  # fmt: skip
                pod = self.decode_picker.pick(others)
                continue
            if not stream or upstream.status_code != 200:
                try:
                    content = await upstream.aread()
                finally:
                    await upstream.aclose()
                    pod.in_flight -= 1
                media = upstream.headers.get("content-type", "application/json")
                if upstream.status_code == 200:
                    self.metrics.e2e.labels("router").observe(time.perf_counter() - t0)
                return Response(content, upstream.status_code, media_type=media)
            relay = self._relay(pod, upstream, t0)
            return StreamingResponse(relay, media_type="text/event-stream")
        raise AssertionError("unreachable")

    async def _relay(self, pod: BackendState, upstream: httpx.Response, t0: float):
        """Stream the pod's SSE bytes on; closing early (client gone) closes the upstream too,
        so the pod aborts the request. Times TTFT (first chunk), TBT (between chunks), E2E."""
        last = None
        try:
            async for chunk in upstream.aiter_raw():
                now = time.perf_counter()
                if last is None:
                    self.metrics.ttft.labels("router").observe(now - t0)
                else:
                    self.metrics.tbt.labels("router").observe(now - last)
                last = now
                yield chunk
            self.metrics.e2e.labels("router").observe(time.perf_counter() - t0)
        finally:
            pod.in_flight -= 1
            await upstream.aclose()
