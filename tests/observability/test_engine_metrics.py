"""EngineMetrics turns a real Engine's stats into the series the Lamina-only panels draw:
step times, layered cohorts, SPEED's skipped token-layers and KV bytes saved, preemptions."""

from __future__ import annotations

from lamina_engine.config import EngineConfig
from lamina_engine.demo import demo_model_path
from lamina_engine.engine import Engine
from lamina_engine.sampling_params import SamplingParams
from lamina_engine.serving.metrics import ServerMetrics

PROMPTS = (list(range(5, 95)), list(range(7, 47)))  # 90 and 40 prompt tokens
K = 2  # SPEED: prompt tokens run 2 of the demo model's 4 layers


def _value(m: ServerMetrics, name: str, **labels: str) -> float:
    return m.registry.get_sample_value(name, dict(role="prefill", **labels)) or 0.0


def test_layered_speed_engine_feeds_every_engine_series():
    engine = Engine(EngineConfig(model=str(demo_model_path()), scheduling_policy="layered",
                                 speed={"prefill_layers": K, "anchors": 1}))  # fmt: skip
    metrics = ServerMetrics("prefill")
    for i, ids in enumerate(PROMPTS):
        engine.add_request(str(i), ids, SamplingParams(max_tokens=3))
    steps = 0
    while engine.scheduler.has_unfinished():
        engine.step()
        metrics.observe_engine(engine)
        steps += 1
    metrics.observe_engine(engine)  # a call without a new step adds nothing

    cfg = engine.model.config
    assert _value(metrics, "lamina_engine_info", policy="layered", speed=str(K)) == 1
    kinds = ("prefill", "decode")
    counted = sum(_value(metrics, "lamina_engine_step_seconds_count", kind=k) for k in kinds)
    assert counted == steps
    assert _value(metrics, "lamina_engine_step_seconds_count", kind="prefill") >= 1
    cohorts = _value(metrics, "lamina_layered_cohort_layer_groups_count")
    assert cohorts >= 1
    assert _value(metrics, "lamina_layered_cohort_layer_groups_sum") >= cohorts

    # Full-depth prompt tokens: the anchor and the last one; the rest skip layers [K, L).
    skipped = sum((len(ids) - 2) * (cfg.num_layers - K) for ids in PROMPTS)
    assert _value(metrics, "lamina_speed_skipped_token_layers_total") == skipped
    per_token_layer = 2 * cfg.num_kv_heads * cfg.head_dim * 4  # K and V, float32 on CPU
    assert _value(metrics, "lamina_speed_kv_bytes_saved_total") == skipped * per_token_layer
    computed = sum(len(ids) * K + 2 * (cfg.num_layers - K) for ids in PROMPTS)
    assert _value(metrics, "lamina_prompt_token_layers_total") == computed

    assert (
        _value(metrics, "lamina_kv_cache_blocks_total") == engine.scheduler.block_manager.num_blocks
    )
    assert _value(metrics, "lamina_kv_cache_blocks_used") == 0  # everything finished
    assert _value(metrics, "lamina_prefill_queue_tokens") == 0
    assert _value(metrics, "lamina_preemptions_total") == engine.stats.preemptions
