"""Prometheus metrics of one server process (docs/design.md §6: `lamina_` prefix, base units).

Each server owns its own CollectorRegistry, so several servers in one process (tests, the
router beside engines) never collide on names.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from lamina_engine.serving.engine_metrics import EngineMetrics

# Seconds: from sub-millisecond TBT on a GPU to minute-long CPU requests. Between 10 ms and
# 1 s, where TBT (tens of ms) and TTFT (hundreds of ms) objectives live, each bound is 1.2-1.5x
# the one before: histogram_quantile interpolates inside a bucket, and the autoscaler acts on a
# percentile 10% off its target (docs/autoscaling.md); 0.025 -> 0.05 -> 0.1 read a 26 ms TBT as
# 47.5 ms. vLLM's TPOT and TTFT buckets are the model. The operator's simulation keeps a copy
# (autoscaling/sim/cluster.py; tests/operator/test_latency_buckets.py keeps them equal); the
# alert rules compare against le="0.1" and le="1.0".
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.06, 0.075, 0.1,
    0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 5.0, 7.5, 10.0, 20.0, 30.0, 60.0,
)  # fmt: skip

# The exposed part of a KV transfer can be well under a millisecond on a GPU.
_KV_BUCKETS = (0.0001, 0.00025, 0.0005) + LATENCY_BUCKETS

# Tokens per request: prompt and output lengths, 1 to 128k.
_TOKEN_BUCKETS = tuple(float(2**i) for i in range(0, 18))

CONTENT_TYPE = CONTENT_TYPE_LATEST


class ServerMetrics:
    """The metrics a server exports; `role` labels every sample of this process."""

    def __init__(self, role: str) -> None:
        self.role = role
        self.registry = r = CollectorRegistry()
        lbl = ["role"]
        self.ttft = Histogram(
            "lamina_request_ttft_seconds", "Time to first token.", lbl, buckets=LATENCY_BUCKETS,
            registry=r,
        )  # fmt: skip
        self.tbt = Histogram(
            "lamina_request_tbt_seconds", "Time between output tokens.", lbl,
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.e2e = Histogram(
            "lamina_request_e2e_seconds", "Request latency, arrival to last token.", lbl,
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.queue_time = Histogram(
            "lamina_request_queue_seconds", "Arrival to first scheduled step.", lbl,
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.requests = Counter(
            "lamina_requests_total", "Finished requests by finish reason.", ["role", "reason"],
            registry=r,
        )  # fmt: skip
        self.queue_depth = Gauge("lamina_queue_depth", "Waiting requests.", lbl, registry=r)
        self.running = Gauge("lamina_running_batch_size", "Running sequences.", lbl, registry=r)
        self.kv_util = Gauge(
            "lamina_kv_cache_utilization", "Share of KV blocks in use, 0..1.", lbl, registry=r
        )
        self.prefill_tokens = Counter(
            "lamina_prefill_tokens_total", "Prompt tokens computed.", lbl, registry=r
        )
        self.decode_tokens = Counter(
            "lamina_decode_tokens_total", "Output tokens decoded.", lbl, registry=r
        )
        self.expert_bytes = Counter(
            "lamina_expert_weight_bytes_total", "Expert weight bytes read by MoE layers.", lbl,
            registry=r,
        )  # fmt: skip
        self.kv_bytes = Counter(
            "lamina_kv_transfer_bytes_total", "KV bytes shipped (prefill) or loaded (decode).",
            ["role", "direction"], registry=r,
        )  # fmt: skip
        self.kv_seconds = Histogram(
            "lamina_kv_transfer_seconds", "Wall time to publish or load one request's KV.",
            ["role", "direction"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        # Layer groups pipeline the transfer: only what follows the last group stays exposed
        # (prefill: its put; decode: its decode and scatter). docs/design.md §3.7: about 1/G.
        self.kv_exposed = Histogram(
            "lamina_kv_transfer_exposed_seconds", "Wall time of one request's KV transfer left "
            "after its last layer group: computed to published (prefill), or arrived to the "
            "request decoding (decode).", ["role", "direction"], buckets=_KV_BUCKETS, registry=r,
        )  # fmt: skip
        self.kv_group_bytes = Counter(
            "lamina_kv_transfer_group_bytes_total", "KV bytes published, by layer-group index "
            "(0 first; with SPEED the last group holds the upper layers' full-depth tokens).",
            ["role", "group"], registry=r,
        )  # fmt: skip
        self.kv_fallback = Counter(
            "lamina_kv_fallback_total", "Requests whose prompt was recomputed locally because "
            "its KV could not be used.", ["role", "reason"], registry=r,
        )  # fmt: skip
        self.router_requests = Counter(
            "lamina_router_requests_total", "Requests routed, by path.", ["role", "path"],
            registry=r,
        )  # fmt: skip
        self.router_retries = Counter(
            "lamina_router_retries_total",
            "Requests the router sent to another pod before any output (reason: connect, the "
            "pod refused or dropped the connection; read, it died before its first byte; unavailable, "
            "it answered 503: draining or not ready since the router last polled it).",
            ["role", "reason"], registry=r,
        )  # fmt: skip
        self.router_upstream_failures = Counter(
            "lamina_router_upstream_failures_total",
            "Requests cut by a pod failure after output had been sent (the client got an error "
            "event), by mode: stream or full.", ["role", "mode"], registry=r,
        )  # fmt: skip
        self.backends_ready = Gauge(
            "lamina_router_backends_ready", "Ready backends by kind.", ["role", "kind"],
            registry=r,
        )  # fmt: skip
        self.router_in_flight = Gauge(
            "lamina_router_in_flight_requests", "Requests the router has open on backends, by "
            "backend kind (its queue: a request waits on its backend).", ["role", "kind"],
            registry=r,
        )  # fmt: skip
        self.http_requests = Counter(
            "lamina_http_requests_total", "HTTP responses by route and status code.",
            ["role", "route", "code"], registry=r,
        )  # fmt: skip
        self.prompt_len = Histogram(
            "lamina_request_prompt_tokens", "Prompt length of finished requests.", lbl,
            buckets=_TOKEN_BUCKETS, registry=r,
        )  # fmt: skip
        self.output_len = Histogram(
            "lamina_request_generation_tokens", "Output tokens of finished requests.", lbl,
            buckets=_TOKEN_BUCKETS, registry=r,
        )  # fmt: skip
        self.prefix_hits = Counter(
            "lamina_prefix_cache_hit_tokens_total", "Prompt tokens of finished requests whose "
            "KV came from the prefix cache (hit rate: over lamina_request_prompt_tokens_sum).",
            lbl, registry=r,
        )  # fmt: skip
        self.engine = EngineMetrics(r, lbl)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def instrument(self, app) -> None:
        """Count every HTTP response of `app` (a FastAPI app) by route and status code."""
        app.add_middleware(_CountResponses, counter=self.http_requests, role=self.role)

    def watch_router(self, pool) -> None:
        """Report a router's open requests per backend kind (a BackendPool) at scrape time."""
        for kind in ("prefill", "decode", "unified"):
            self.router_in_flight.labels(self.role, kind).set_function(
                lambda kind=kind: sum(p.in_flight for p in pool.pods.values() if p.role == kind)
            )

    def finished(self, out) -> None:
        """A RequestOutput finished: its lengths and prefix-cache hits."""
        prompt = len(out.prompt_token_ids)
        self.prompt_len.labels(self.role).observe(prompt)
        self.output_len.labels(self.role).observe(len(out.token_ids))
        self.prefix_hits.labels(self.role).inc(out.num_cached_tokens)

    def observe_engine(self, engine) -> None:
        """Sample the Engine after a step (engine thread): see EngineMetrics."""
        self.engine.observe(self.role, engine)


class _CountResponses:
    """ASGI middleware: count each response's status once its start is sent (a stream's
    count lands when it ends). No start sent means the app raised: Starlette answers 500."""

    def __init__(self, app, counter: Counter, role: str) -> None:
        self.app, self.counter, self.role = app, counter, role

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def send_counted(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_counted)
        finally:
            # The matched route template keeps the label set small; unmatched paths are 404s.
            route = getattr(scope.get("route"), "path", "unmatched")
            self.counter.labels(self.role, route, str(status)).inc()
