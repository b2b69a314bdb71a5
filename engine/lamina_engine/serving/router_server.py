"""The router (`--role router`): the OpenAI front door in front of prefill and decode pods.

Per request: parse, tokenize and validate once (serving/prepared_request.py; the router loads
the model's tokenizer and config.json, never weights) and forward the token ids and
SamplingParams, so the pods do not repeat that work; pick a decode pod (least KV utilisation) and, when the prompt is long enough and a prefill pod
is ready, a prefill pod (prefix match, then least outstanding FLOPs). Disaggregated: the prefill
pod gets the request with a KV handle and ships the prompt's KV; at the same time the decode pod
gets it with the same handle, waits for the KV and streams tokens back through the router.
Otherwise the decode (or unified) pod serves it whole. A connection failure to a pod marks it
down and the request goes to another once.

The router calls pods on their internal port (--prefill-service/--decode-service name
HOST:INTERNAL_PORT) with the deployment's internal key, and mints each KV handle bound to the
prompt and model (serving/kv_handles.py). Its own internal port serves /v1/admin/drain.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from lamina_engine.core.block_manager import block_hashes
from lamina_engine.serving.backends import BackendPool
from lamina_engine.serving.config import ServeConfig
from lamina_engine.serving.http_limits import check_prompt_chars
from lamina_engine.serving.internal_app import internal_app
from lamina_engine.serving.kv_handles import mint
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
            self._pod_headers(),
        )
        self.metrics.watch_router(self.pool)
        self.draining = False
        self.exiting = False  # told to exit (SIGTERM): the drain cannot be undone
        self._preparing = 0  # requests being tokenized (not yet counted on a pod)
        self.client: httpx.AsyncClient | None = None
        self._tasks: set[asyncio.Task] = set()
        self.app = self._build()
        self.internal_app = internal_app("Lamina router", self, self.metrics)
        if config.internal_key is None:
            log.warning(
                "LAMINA_INTERNAL_KEY is not set: the router's internal port is open to anyone "
                "who reaches it, and its KV handles are unsigned, so decode pods use shipped KV "
                "without ever caching it"
            )

    def _pod_headers(self) -> dict[str, str]:
        key = self.config.internal_key
        return {} if key is None else {"Authorization": f"Bearer {key.get_secret_value()}"}

    def _build(self) -> FastAPI:
        @asynccontextmanager
        async def lifespan(_: FastAPI):
            self.client = httpx.AsyncClient(
                timeout=httpx.Timeout(None, connect=2.0), headers=self._pod_headers()
            )
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
        counts = {"prefill": len(prefill), "decode": len(decode), "unified": len(unified)}
        if decode or unified:  # a decode pod computes prompts itself when no prefill pod is up
            body: dict = {"status": "ok", **counts}
            if decode and not prefill and not unified:
                body["degraded"] = "no prefill pod ready: the decode pods compute the prompts"
            return JSONResponse(body)
        msg = (f"not ready: {len(prefill)} prefill, {len(decode)} decode, {len(unified)} unified "
               "backends ready; need a decode or a unified pod")  # fmt: skip
        return JSONResponse(error_body(503, msg), 503)

    async def live(self) -> JSONResponse:
        """Liveness: the event loop answers. Draining and missing backends are readiness
        matters (/health), not reasons to restart the router."""
        return JSONResponse({"status": "alive"})

    async def models(self) -> dict:
        return {"object": "list", "data": [{"id": self.config.model_name, "object": "model",
                                            "owned_by": "lamina", "created": 0}]}  # fmt: skip

    async def drain_report(self) -> dict:
        """The drain state (internal_app.py): in_flight, requests being proxied; kv_pending,
        prefills this router still drives."""
        proxied = sum(p.in_flight for p in self.pool.pods.values() if p.service != "prefill")
        return {"draining": self.draining, "in_flight": proxied + self._preparing,
                "kv_pending": len(self._tasks)}  # fmt: skip

    # ------------------------------------------------------------------ requests
    async def completions(self, req: CompletionRequest, request: Request):
        return await self._route("completions", req, request)

    async def chat(self, req: ChatCompletionRequest, request: Request):
        return await self._route("chat", req, request)

    async def _route(self, kind: Kind, req: CompletionRequest | ChatCompletionRequest, request):
        if self.draining:
            raise OpenAIError(503, "the router is draining; retry shortly", "unavailable")
        if req.model != self.config.model_name:
            raise OpenAIError(
                404, f"The model `{req.model}` does not exist; this router serves "
                f"`{self.config.model_name}`", "not_found_error", "model", "model_not_found",
            )  # fmt: skip
        if req.n != 1:
            raise OpenAIError(400, f"n={req.n} is not supported; only n=1", param="n")
        check_prompt_chars(req, self.config.max_prompt_chars)
        # the pods get token ids from here on; tokenizing costs seconds per MB, so it runs off
        # the event loop: /health and other streams go on meanwhile
        self._preparing += 1
        try:
            prepared = await asyncio.to_thread(prepare, kind, req, self.tokenizer)
        finally:
            self._preparing -= 1
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
            body["kv_handle"] = mint(self.config.internal_key, ids, self.config.model_name)
            hashes = block_hashes(ids, self.config.engine.block_size)
            pod, flops = self.prefill_picker.pick(prefills, hashes, len(ids))
            self._spawn(self._prefill(pod, decode, flops, hashes, body))
        self.metrics.router_requests.labels("router", "disagg" if disaggregate else "direct").inc()
        t0 = time.perf_counter()
        proxy = self._proxy(decode, GENERATE_PATH, body, req.stream, decoders, t0)
        return await self._unless_gone(proxy, request)

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
        """Forward to `pod` and relay its answer. Before any output reached the client (the pod
        refused the connection or died before its answer, which it sends after its first
        token), the request goes to another pod once (lamina_router_retries_total). A client
        that leaves closes the upstream, so the pod aborts the request."""
        tried: list[BackendState] = []
        while True:
            pod, upstream = await self._open(pod, path, body, pods, tried)
            if stream and upstream.status_code == 200:
                relay = self._relay(pod, upstream, t0)
                return StreamingResponse(relay, media_type="text/event-stream")
            try:
                content = await upstream.aread()
            except httpx.TransportError as exc:
                pod.in_flight -= 1
                await upstream.aclose()
                pod = self._failover(pod, pods, tried, "read", exc)
                body = {k: v for k, v in body.items() if k != "kv_handle"}  # recompute there
                continue
            except BaseException:
                pod.in_flight -= 1
                await upstream.aclose()
                raise
            await upstream.aclose()
            pod.in_flight -= 1
            media = upstream.headers.get("content-type", "application/json")
            if upstream.status_code == 200:
                self.metrics.e2e.labels("router").observe(time.perf_counter() - t0)
            return Response(content, upstream.status_code, media_type=media)

    async def _open(self, pod, path: str, body: dict, pods, tried: list):
        """(pod, its streamed response), failing over once on a connection failure or a 503
        (the pod began draining, or is not ready, since the last poll: it did no work)."""
        while True:
            tried.append(pod)
            pod.in_flight += 1
            request = self.client.build_request("POST", f"{pod.url}{path}", json=body)
            try:
                upstream = await self.client.send(request, stream=True)
            except httpx.TransportError as exc:
                pod.in_flight -= 1
                pod = self._failover(pod, pods, tried, "connect", exc)
                body = {k: v for k, v in body.items() if k != "kv_handle"}
                continue
            except BaseException:  # cancelled: the client left
                pod.in_flight -= 1
                raise
            other = self._instead_of_refusing(pod, upstream, pods, tried)
            if other is None:
                return pod, upstream
            pod.in_flight -= 1
            await upstream.aclose()
            pod = other
            body = {k: v for k, v in body.items() if k != "kv_handle"}  # recompute there

    def _instead_of_refusing(self, pod, upstream: httpx.Response, pods, tried: list):
        """Another pod to send the request to when `pod` answered 503 before any work (it
        began draining since the last poll); None to relay the answer as it is (not a 503, or
        no untried pod left: the client gets the 503, which is retryable)."""
        if upstream.status_code != 503:
            return None
        others = _retry_candidates(pods, tried)
        if not others:
            return None
        pod.draining = True  # until its next poll says otherwise
        log.info("backend %s answered 503 (draining or not ready); retrying on another",
                 pod.address)  # fmt: skip
        self.metrics.router_retries.labels("router", "unavailable").inc()
        return self.decode_picker.pick(others)

    def _failover(self, pod, pods, tried: list, reason: str, exc: Exception):
        """`pod` failed before any output: mark it down and pick another not tried yet (one
        retry in all), else raise a 502."""
        self.pool.mark_down(pod)
        others = _retry_candidates(pods, tried)
        if not others:
            raise OpenAIError(502, f"backend {pod.address} failed ({reason}): {exc!r}; "
                              "retry the request", "server_error")  # fmt: skip
        log.warning("backend %s failed (%s: %r); retrying on another", pod.address, reason, exc)
        self.metrics.router_retries.labels("router", reason).inc()
        return self.decode_picker.pick(others)

    @staticmethod
    async def _unless_gone(work, request: Request):
        """Await `work`; a client that disconnects first cancels it, which closes the upstream
        connection, so the pod aborts the request (a stream's later disconnect closes it in
        _relay). The pod answers only once its first token (or, not streaming, its last) is
        out, so a client can leave long before."""
        task = asyncio.ensure_future(work)
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not task.done():
                task.cancel()
                await asyncio.wait({task})
        if task.cancelled():
            return Response(status_code=499)  # nobody reads it
        return task.result()

    async def _relay(self, pod: BackendState, upstream: httpx.Response, t0: float):
        """Stream the pod's SSE events on (whole events only); closing early (client gone)
        closes the upstream too, so the pod aborts the request. If the pod dies mid-stream
        the client gets an OpenAI error event, never a cut chunked body. Times TTFT (first
        chunk), TBT (between chunks), E2E."""
        last = None
        pending = b""
        try:
            try:
                async for chunk in upstream.aiter_raw():
                    now = time.perf_counter()
                    if last is None:
                        self.metrics.ttft.labels("router").observe(now - t0)
                    else:
                        self.metrics.tbt.labels("router").observe(now - last)
                    last = now
                    pending += chunk
                    cut = pending.rfind(b"\n\n") + 2
                    if cut >= 2:
                        yield pending[:cut]
                        pending = pending[cut:]
                if pending:
                    yield pending
                self.metrics.e2e.labels("router").observe(time.perf_counter() - t0)
            except httpx.TransportError as exc:
                log.warning("backend %s failed mid-stream: %r", pod.address, exc)
                self.pool.mark_down(pod)
                self.metrics.router_upstream_failures.labels("router", "stream").inc()
                msg = (f"the backend {pod.address} serving this request failed mid-stream "
                       f"({exc!r}); the output is incomplete: retry the request")  # fmt: skip
                yield f"data: {json.dumps(error_body(502, msg))}\n\n".encode()
                yield b"data: [DONE]\n\n"
        finally:
            pod.in_flight -= 1
            await upstream.aclose()


def _retry_candidates(pods, tried: list) -> list[BackendState]:
    """The pods a request may go to next: available and not tried yet; none once it was sent
    twice (one retry in all)."""
    if len(tried) >= 2:
        return []
    return [p for p in pods if p.available and all(p is not t for t in tried)]


async def _disconnected(request: Request) -> None:
    """Returns when the client has disconnected (the body was read already)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
