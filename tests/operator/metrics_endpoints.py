"""Real HTTP endpoints standing in for what the autoscaler reads: an engine pod's /metrics
(the engine's metric names, rendered by prometheus_client) and a Prometheus query API that
answers per-pod vectors; plus a settable clock."""

from __future__ import annotations

import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class EnginePod:
    """A pod's metrics endpoint: the engine's metric names, served over HTTP."""

    def __init__(self, role: str):
        self.role = role
        r = self.registry = CollectorRegistry()
        self.ttft = Histogram("lamina_request_ttft_seconds", "", ["role"], buckets=BUCKETS,
                              registry=r)  # fmt: skip
        self.tbt = Histogram("lamina_request_tbt_seconds", "", ["role"], buckets=BUCKETS,
                             registry=r)  # fmt: skip
        self.queue = Gauge("lamina_queue_depth", "", ["role"], registry=r)
        self.running = Gauge("lamina_running_batch_size", "", ["role"], registry=r)
        self.kv = Gauge("lamina_kv_cache_utilization", "", ["role"], registry=r)
        self.prefill_tokens = Counter("lamina_prefill_tokens_total", "", ["role"], registry=r)
        self.decode_tokens = Counter("lamina_decode_tokens_total", "", ["role"], registry=r)
        self.output = Histogram("lamina_request_generation_tokens", "", ["role"],
                                buckets=tuple(float(2**i) for i in range(18)), registry=r)  # fmt: skip
        pod = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                body = generate_latest(pod.registry)
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def finish(self, *outputs: int):
        """Requests finished with these output lengths (tokens)."""
        for tokens in outputs:
            self.output.labels(self.role).observe(tokens)

    def load(self, tbt=None, ttft=None, n=200, running=0, kv=0.0, tokens=0):
        for _ in range(n):
            if tbt is not None:
                self.tbt.labels(self.role).observe(tbt)
            if ttft is not None:
                self.ttft.labels(self.role).observe(ttft)
        self.running.labels(self.role).set(running)
        self.kv.labels(self.role).set(kv)
        (self.decode_tokens if self.role == "decode" else self.prefill_tokens).labels(
            self.role
        ).inc(tokens)

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


class Clock:
    def __init__(self):
        self.now = 1_800_000_000.0

    def __call__(self):
        return self.now


class FakePrometheus:
    """Answers /api/v1/query with per-pod vectors, as Prometheus does."""

    def __init__(self, decode_pods):
        self.queries: list[str] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                query = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)["query"][0]
                fake.queries.append(query)
                result = []
                for pod in decode_pods:
                    if "lamina_request_tbt_seconds_bucket" in query:
                        for le, count in (("0.05", 0), ("0.1", 100), ("+Inf", 100)):
                            result.append({"metric": {"pod": pod, "le": le},
                                           "value": [0, str(count)]})  # fmt: skip
                    elif "lamina_running_batch_size" in query:
                        result.append({"metric": {"pod": pod}, "value": [0, "20"]})
                    elif "lamina_kv_cache_utilization" in query:
                        result.append({"metric": {"pod": pod}, "value": [0, "0.5"]})
                    elif "lamina_request_generation_tokens_count" in query:
                        result.append({"metric": {"pod": pod}, "value": [0, "2"]})
                    elif "lamina_request_generation_tokens_sum" in query:
                        result.append({"metric": {"pod": pod}, "value": [0, "900"]})
                body = json.dumps(
                    {"status": "success", "data": {"resultType": "vector", "result": result}}
                ).encode()
                self.send_response(200)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
