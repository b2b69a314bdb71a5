"""Prometheus metrics sampled from the Engine after each step: KV blocks, preemptions, the
prefill queue, step times, layered cohorts and SPEED's savings (docs/operations.md).

`observe` runs on the engine thread (the only thread that touches the Engine); it turns the
Engine's cumulative EngineStats into counter increments and its StepRecords into histogram
observations, remembering how far it got.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Seconds of model time per step: sub-millisecond decode on a GPU to seconds of CPU prefill.
_STEP_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
# Layer groups per cohort: 1 (no split) up to one group per layer of a deep model.
_GROUP_BUCKETS = (1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0, 48.0, 64.0, 128.0)


class EngineMetrics:
    def __init__(self, r: CollectorRegistry, lbl: list[str]) -> None:
        self.info = Gauge(
            "lamina_engine_info", "Always 1; labels name the scheduling policy (chunked, "
            "layered, ...) and the SPEED cutoff K (off without SPEED).",
            lbl + ["policy", "speed"], registry=r,
        )  # fmt: skip
        self.blocks_used = Gauge(
            "lamina_kv_cache_blocks_used", "KV-cache blocks in use (lower pool).", lbl, registry=r
        )
        self.blocks_total = Gauge(
            "lamina_kv_cache_blocks_total", "KV-cache blocks (lower pool).", lbl, registry=r
        )
        self.preemptions = Counter(
            "lamina_preemptions_total", "Sequences preempted (their KV freed, recomputed).", lbl,
            registry=r,
        )  # fmt: skip
        self.prefill_queue = Gauge(
            "lamina_prefill_queue_tokens", "Prompt tokens not yet computed, over waiting and "
            "running sequences.", lbl, registry=r,
        )  # fmt: skip
        self.step_seconds = Histogram(
            "lamina_engine_step_seconds", "Model time of one engine step; kind=prefill when the "
            "step computed prompt tokens, else decode.", lbl + ["kind"], buckets=_STEP_BUCKETS,
            registry=r,
        )  # fmt: skip
        self.cohort_groups = Histogram(
            "lamina_layered_cohort_layer_groups", "Layer groups of each finished layered-prefill "
            "cohort.", lbl, buckets=_GROUP_BUCKETS, registry=r,
        )  # fmt: skip
        self.token_layers = Counter(
            "lamina_prompt_token_layers_total", "Sum over computed prompt tokens of the layers "
            "each ran through (SPEED: K, full-depth tokens L).", lbl, registry=r,
        )  # fmt: skip
        self.skipped_layers = Counter(
            "lamina_speed_skipped_token_layers_total", "Prompt token-layers SPEED did not "
            "compute: prompt tokens x L minus the token-layers computed.", lbl, registry=r,
        )  # fmt: skip
        self.kv_saved = Counter(
            "lamina_speed_kv_bytes_saved_total", "KV-cache bytes SPEED did not write: skipped "
            "token-layers x the KV bytes of one token in one layer.", lbl, registry=r,
        )  # fmt: skip
        self._step = 0  # index of the last StepRecord observed
        self._preemptions = 0
        self._token_layers = 0
        self._skipped = 0  # most skipped token-layers seen (kept monotonic, see observe)

    def observe(self, role: str, engine) -> None:
        stats, sched = engine.stats, engine.scheduler
        blocks = sched.block_manager
        speed = engine.speed
        self.info.labels(role, sched.config.scheduling_policy, "off" if speed is None else str(
            speed.prefill_layers)).set(1)  # fmt: skip
        self.blocks_used.labels(role).set(blocks.num_used_blocks)
        self.blocks_total.labels(role).set(blocks.num_blocks)
        self.preemptions.labels(role).inc(stats.preemptions - self._preemptions)
        self._preemptions = stats.preemptions
        queued = sum(
            max(0, s.num_prompt_tokens - s.num_computed_tokens)
            for s in (*sched.waiting, *sched.running)
        )
        self.prefill_queue.labels(role).set(queued)
        self._observe_steps(role, stats)
        self.token_layers.labels(role).inc(stats.prompt_layer_tokens - self._token_layers)
        self._token_layers = stats.prompt_layer_tokens
        # A layered cohort counts its token-layers group by group but its prompt tokens at the
        # last group, so mid-cohort this difference dips: count only new highs.
        skipped = stats.prefill_tokens * engine.model.config.num_layers - stats.prompt_layer_tokens
        if skipped > self._skipped:
            per_token_layer = engine.kv_bytes_per_token_layer
            self.skipped_layers.labels(role).inc(skipped - self._skipped)
            self.kv_saved.labels(role).inc((skipped - self._skipped) * per_token_layer)
            self._skipped = skipped
        else:
            self.skipped_layers.labels(role).inc(0)  # the series exists from the first step
            self.kv_saved.labels(role).inc(0)

    def _observe_steps(self, role: str, stats) -> None:
        records = stats.step_records
        if records is None:
            return
        new = []  # only the records since the last call: walk back from the newest
        for rec in reversed(records):
            if rec.index <= self._step:
                break
            new.append(rec)
        for rec in reversed(new):
            prompt_work = rec.scheduled_tokens > rec.decode_tokens or rec.layer_group is not None
            kind = "prefill" if prompt_work else "decode"
            self.step_seconds.labels(role, kind).observe(rec.model_seconds)
            if rec.layer_group is not None and rec.layer_group == rec.num_groups - 1:
                self.cohort_groups.labels(role).observe(rec.num_groups)
        if records:
            self._step = records[-1].index
