"""Pod metrics -> PodSample: scrape each pod's /metrics (Prometheus text) or ask a Prometheus.

Names read (the engine's serving/metrics.py):
    lamina_request_ttft_seconds (histogram), lamina_request_tbt_seconds (histogram),
    lamina_queue_depth, lamina_running_batch_size, lamina_kv_cache_utilization (gauges),
    lamina_prefill_tokens_total, lamina_decode_tokens_total (counters),
    lamina_engine_step_seconds (histogram: its _sum over time is the pod's busy share),
    lamina_request_generation_tokens (histogram of finished requests' output tokens: the rates
    of its _count and _sum are the requests finished per second and their output tokens, whose
    ratio is the mean output the decode forecast uses).
The waiting prompt tokens of a pod are its waiting requests x its mean prompt so far (prefill
tokens computed / first tokens produced). Not lamina_prefill_queue_tokens: it also counts what
is left of the prompts being computed, a remainder every pod carries, so its pool total grows
with the pool and more pods would never bring it under target.

A direct scrape sees counters and histograms as running totals: rates and histogram deltas
come from the difference with the same pod's previous scrape (kept here, keyed by pod uid), so
a pod's first scrape gives gauges only. A counter that went down (the process restarted) is
read as starting from zero.
"""

from __future__ import annotations

import json
import math
import urllib.parse
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from .observation import Histogram, PodSample

TTFT, TBT = "lamina_request_ttft_seconds", "lamina_request_tbt_seconds"
GAUGES = ("lamina_queue_depth", "lamina_running_batch_size", "lamina_kv_cache_utilization")
COUNTERS = ("lamina_prefill_tokens_total", "lamina_decode_tokens_total")
STEP_SECONDS = "lamina_engine_step_seconds_sum"
OUTPUT = "lamina_request_generation_tokens"
FINISHED, FINISHED_TOKENS = f"{OUTPUT}_count", f"{OUTPUT}_sum"


@dataclass(frozen=True)
class PodTarget:
    """A ready pod to read: its name and uid, where /metrics is, how long it has been Ready,
    and the base URL of its internal port (the drain endpoint)."""

    name: str
    uid: str
    url: str
    ready_seconds: float
    admin_url: str = ""


@dataclass
class Snapshot:
    time: float
    values: dict[str, float] = field(default_factory=dict)  # gauges, counters, *_count
    buckets: dict[str, dict[float, float]] = field(default_factory=dict)  # name -> le -> count


def parse(text: str, now: float) -> Snapshot:
    """Sum every series of a name over its labels (a pod exports one role)."""
    snap = Snapshot(now)
    values: dict[str, float] = defaultdict(float)
    buckets: dict[str, dict[float, float]] = defaultdict(lambda: defaultdict(float))
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                le = float(sample.labels["le"])
                buckets[sample.name.removesuffix("_bucket")][le] += sample.value
            else:
                values[sample.name] += sample.value
    snap.values, snap.buckets = dict(values), {k: dict(v) for k, v in buckets.items()}
    return snap


def _delta(now: float, before: float | None) -> float:
    if before is None or now < before:  # first scrape, or the process restarted
        return now
    return now - before


def _hist(name: str, cur: Snapshot, prev: Snapshot | None) -> Histogram:
    if prev is None or name not in cur.buckets:
        return ()
    old = prev.buckets.get(name, {})
    restarted = any(v < old.get(le, 0.0) for le, v in cur.buckets[name].items())
    return tuple(
        (le, v if restarted else v - old.get(le, 0.0))
        for le, v in sorted(cur.buckets[name].items())
    )


def sample(target: PodTarget, cur: Snapshot, prev: Snapshot | None) -> PodSample:
    v = cur.values
    seconds = cur.time - prev.time if prev is not None else 0.0

    def rate(name: str) -> float:
        if prev is None or seconds <= 0:
            return 0.0
        return _delta(v.get(name, 0.0), prev.values.get(name)) / seconds

    waiting = v.get("lamina_queue_depth", 0.0)
    firsts = v.get(f"{TTFT}_count", 0.0)
    mean_prompt = v.get("lamina_prefill_tokens_total", 0.0) / firsts if firsts else 0.0
    return PodSample(
        name=target.name,
        ready_seconds=target.ready_seconds,
        ttft=_hist(TTFT, cur, prev),
        tbt=_hist(TBT, cur, prev),
        queued_prefill_tokens=waiting * mean_prompt,
        waiting_requests=waiting,
        running=v.get("lamina_running_batch_size", 0.0),
        kv_utilization=v.get("lamina_kv_cache_utilization", 0.0),
        prefill_tokens_per_second=rate("lamina_prefill_tokens_total"),
        decode_tokens_per_second=rate("lamina_decode_tokens_total"),
        busy_fraction=min(1.0, rate(STEP_SECONDS)) if prev and STEP_SECONDS in v else None,
        finished_per_second=rate(FINISHED),
        finished_output_tokens_per_second=rate(FINISHED_TOKENS),
    )


class MetricsError(Exception):
    """Metrics could not be read; the message says from where and why."""


class PodScraper:
    """Reads /metrics of each pod directly; remembers each pod's previous scrape."""

    def __init__(self) -> None:
        self.previous: dict[str, Snapshot] = {}

    def read(self, targets: list[PodTarget], now: float, timeout: float) -> list[PodSample]:
        out = []
        for target in targets:
            try:
                with urllib.request.urlopen(target.url, timeout=timeout) as response:
                    text = response.read().decode()
            except (OSError, ValueError) as exc:
                raise MetricsError(f"GET {target.url} ({target.name}): {exc}") from exc
            cur = parse(text, now)
            out.append(sample(target, cur, self.previous.get(target.uid)))
            self.previous[target.uid] = cur
        return out

    def forget(self, keep: set[str]) -> None:
        """Drop snapshots of pods that are gone (uids not in `keep`)."""
        self.previous = {uid: s for uid, s in self.previous.items() if uid in keep}


class PrometheusReader:
    """Reads the same quantities from a Prometheus (its HTTP API), per pod.

    Assumes the usual scrape labels `namespace` and `pod` (kube-prometheus PodMonitor or
    kubernetes_sd relabelling). Rates and histogram deltas are over the evaluation interval.
    """

    def __init__(self, base_url: str, timeout: float):
        self.base_url, self.timeout = base_url.rstrip("/"), timeout

    def _query(self, promql: str) -> list[dict]:
        url = f"{self.base_url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        try:
            with urllib.request.urlopen(url, timeout=self.timeout) as response:
                doc = json.loads(response.read())
        except (OSError, ValueError) as exc:
            raise MetricsError(f"Prometheus query {promql!r} at {self.base_url}: {exc}") from exc
        if doc.get("status") != "success":
            raise MetricsError(f"Prometheus refused {promql!r}: {doc.get('error', doc)}")
        return doc["data"]["result"]

    def read(self, namespace: str, targets: list[PodTarget], window: int) -> list[PodSample]:
        if not targets:
            return []
        sel = f'namespace="{namespace}",pod=~"{"|".join(t.name for t in targets)}"'
        per_pod: dict[str, dict[str, float]] = defaultdict(dict)
        buckets: dict[str, dict[str, dict[float, float]]] = defaultdict(lambda: defaultdict(dict))
        for name in GAUGES:
            for r in self._query(f"sum by (pod) ({name}{{{sel}}})"):
                per_pod[r["metric"]["pod"]][name] = float(r["value"][1])
        for name in (*COUNTERS, STEP_SECONDS, FINISHED, FINISHED_TOKENS):
            for r in self._query(f"sum by (pod) (rate({name}{{{sel}}}[{window}s]))"):
                per_pod[r["metric"]["pod"]][name] = float(r["value"][1])
        for name in (TTFT, TBT):
            q = f"sum by (pod, le) (increase({name}_bucket{{{sel}}}[{window}s]))"
            for r in self._query(q):
                le = float(r["metric"]["le"])
                buckets[r["metric"]["pod"]][name][le] = float(r["value"][1])
        out = []
        for t in targets:
            v = per_pod.get(t.name, {})
            waiting = v.get("lamina_queue_depth", 0.0)
            hists = {
                name: tuple(sorted(buckets[t.name][name].items())) if buckets[t.name][name] else ()
                for name in (TTFT, TBT)
            }
            # mean prompt over the window: prompt tokens / first tokens
            firsts = hists[TTFT][-1][1] if hists[TTFT] else 0.0
            tokens = v.get("lamina_prefill_tokens_total", 0.0) * window
            queued = waiting * tokens / firsts if firsts else 0.0
            out.append(
                PodSample(
                    t.name,
                    t.ready_seconds,
                    ttft=hists[TTFT],
                    tbt=hists[TBT],
                    queued_prefill_tokens=queued if math.isfinite(queued) else 0.0,
                    waiting_requests=waiting,
                    running=v.get("lamina_running_batch_size", 0.0),
                    kv_utilization=v.get("lamina_kv_cache_utilization", 0.0),
                    prefill_tokens_per_second=v.get("lamina_prefill_tokens_total", 0.0),
                    decode_tokens_per_second=v.get("lamina_decode_tokens_total", 0.0),
                    busy_fraction=min(1.0, v[STEP_SECONDS]) if STEP_SECONDS in v else None,
                    finished_per_second=v.get(FINISHED, 0.0),
                    finished_output_tokens_per_second=v.get(FINISHED_TOKENS, 0.0),
                )  # fmt: skip
            )
        return out
