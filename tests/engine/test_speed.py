"""SPEED: the paged engine against a dense masked oracle, K = L against the normal engine,
both KV pools' tables, prefix caching, preemption and the prefill/KV counters."""

from __future__ import annotations

import functools
import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from lamina_engine import LLM, SamplingParams
from lamina_engine.cli import build_parser, engine_config
from lamina_engine.config import EngineConfig
from lamina_engine.core.scheduler import RequestRejectedError, Scheduler
from lamina_engine.core.scheduler_config import SchedulerConfig
from lamina_engine.core.speed_layout import SpeedLayout
from lamina_engine.models import CausalLM
from lamina_engine.sequence import Sequence
from lamina_engine.speed_config import SpeedConfig


def _load_speed_reference():
    """tests/engine/speed_reference.py, the dense SPEED oracle (a sibling file: pytest's
    importlib mode cannot import it by name)."""
    path = Path(__file__).with_name("speed_reference.py")
    spec = importlib.util.spec_from_file_location("lamina_tests_speed_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


speed_generate = _load_speed_reference().speed_generate

GREEDY = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
# BOS-led prompts of 1 to 15 tokens: a one-token prompt is all "last token"; 15 spans 4 blocks
PROMPTS = [[0] + list(range(3, 3 + n)) for n in (5, 14, 2, 0, 9)]
POLICY_ARGS = {
    "chunked": dict(max_num_batched_tokens=8, max_num_seqs=4),  # prompts split into chunks
    "layered": dict(layered_group_tokens=4, layered_budget=16),  # several groups and cohorts
}


def engine(path, policy="chunked", **kw) -> LLM:
    return LLM(
        str(path), device="cpu", block_size=4, scheduling_policy=policy, **POLICY_ARGS[policy], **kw
    )


@functools.cache
def _oracle(path: str, k: int, anchors: int, prompts: tuple, max_tokens: int) -> list:
    model = CausalLM.from_pretrained(path)
    return [speed_generate(model, list(p), max_tokens, k, anchors) for p in prompts]


def oracle(path, k: int, anchors: int, prompts=PROMPTS, max_tokens=6) -> list[list[int]]:
    """Greedy tokens of the dense oracle (cached: both policies compare with the same run)."""
    return _oracle(str(path), k, anchors, tuple(map(tuple, prompts)), max_tokens)


_CHECKPOINTS: dict[str, Path] = {}  # family -> folder, shared by this module's tests


@pytest.fixture
def checkpoints(make_checkpoint, tmp_path_factory):
    """family -> a checkpoint folder built once per session, so cached oracle runs apply."""

    def get(family: str) -> Path:
        if family not in _CHECKPOINTS:
            _CHECKPOINTS[family] = make_checkpoint(tmp_path_factory.mktemp(family), family)
        return _CHECKPOINTS[family]

    return get


# ---- settings ------------------------------------------------------------------------------


def test_speed_setting_is_validated_and_resolved():
    assert EngineConfig(model="x").speed is None  # off by default
    cfg = EngineConfig(model="x", speed={"prefill_layers": 0.75})
    assert (cfg.speed.layers_for(32), cfg.speed.anchors) == (24, 1)
    assert SpeedConfig(prefill_layers=24).layers_for(32) == 24
    assert SpeedConfig(prefill_layers=1.0).layers_for(5) == 5
    with pytest.raises(ValueError, match="exceeds the model's 5 layers"):
        SpeedConfig(prefill_layers=6).layers_for(5)
    with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\]"):
        SpeedConfig(prefill_layers=1.5)
    with pytest.raises(ValueError, match=">= 1 layer"):
        SpeedConfig(prefill_layers=0)
    with pytest.raises(ValueError, match="anchors"):
        EngineConfig(model="x", speed={"prefill_layers": 2, "anchors": -1})
    with pytest.raises(ValueError, match="SPEED prefill_layers must be in"):
        SpeedLayout(num_layers=4, prefill_layers=5)
    # a checkpoint trained under the SPEED mask carries its cutoff
    got = SpeedConfig.from_model_config({"lower_k": 24, "prefill_mode": "lower"})
    assert (got.prefill_layers, got.anchors) == (24, 1)
    got = SpeedConfig.from_model_config({"speed_prefill_layers": 0.5, "speed_anchors": 2})
    assert (got.prefill_layers, got.anchors) == (0.5, 2)
    assert SpeedConfig.from_model_config({"num_hidden_layers": 32}) is None
    with pytest.raises(ValueError, match="config.json lower_k=0"):
        SpeedConfig.from_model_config({"lower_k": 0})


def test_cli_flags_reach_the_engine_config():
    args = build_parser().parse_args(
        ["generate", "hi", "--model", "m", "--speed-prefill-layers", "0.75", "--speed-anchors", "2"]
    )
    assert engine_config(args).speed == SpeedConfig(prefill_layers=0.75, anchors=2)
    args = build_parser().parse_args(
        ["generate", "hi", "--model", "m", "--speed-prefill-layers", "3"]
    )
    assert engine_config(args).speed == SpeedConfig(prefill_layers=3, anchors=1)
    args = build_parser().parse_args(["generate", "hi", "--model", "m"])
    assert engine_config(args).speed is None
    with pytest.raises(SystemExit):
        build_parser().parse_args(["generate", "hi", "--speed-prefill-layers", "most"])


# ---- two block tables (no torch) -----------------------------------------------------------


def speed_scheduler(anchors=1, num_blocks=32, **kw) -> Scheduler:
    layout = SpeedLayout(num_layers=4, prefill_layers=3, anchors=anchors)
    return Scheduler(
        SchedulerConfig(num_blocks=num_blocks, max_model_len=64, block_size=4, speed=layout, **kw)
    )


def test_upper_table_holds_only_anchors_last_prompt_token_and_decodes():
    lay = SpeedLayout(num_layers=4, prefill_layers=3, anchors=2)
    assert lay.full_depth_positions(10, 0, 10) == [0, 1, 9]
    assert lay.full_depth_positions(10, 4, 12) == [9, 10, 11]
    assert [lay.num_upper(10, n) for n in (0, 1, 2, 5, 9, 10, 12)] == [0, 1, 2, 2, 2, 3, 5]
    assert lay.num_upper(1, 1) == 1  # a one-token prompt: its only token is the last one
    assert lay.prompt_layer_tokens(10, 0, 10) == 10 * 3 + 3 * 1

    sched = speed_scheduler(anchors=2)
    s = Sequence(range(10), SimpleNamespace(max_tokens=8), seq_id=1)
    sched.add(s)
    out = sched.schedule()
    assert (len(s.block_table), len(s.upper_block_table)) == (3, 1)  # 10 slots, 3 slots
    sched.postprocess(out, {1: 5})
    for tok in range(6, 10):  # positions 10..13: upper slots 3..6 -> a second upper block
        sched.postprocess(sched.schedule(), {1: tok})
    assert (len(s.block_table), len(s.upper_block_table)) == (4, 2)
    assert sched.block_manager.upper.num_used_blocks == 2
    sched.finish(s, "stop")
    assert sched.block_manager.num_used_blocks == 0
    assert sched.block_manager.upper.num_used_blocks == 0


def test_prefix_hits_stop_below_full_depth_tokens():
    for anchors, want_hit in ((0, 8), (1, 0)):  # 11-token prompt: 2 full blocks below 10
        sched = speed_scheduler(anchors=anchors)
        first = Sequence(range(11), SimpleNamespace(max_tokens=4), seq_id=1)
        sched.add(first)
        sched.postprocess(sched.schedule(), {1: 99})
        second = Sequence(range(11), SimpleNamespace(max_tokens=4), seq_id=2)
        sched.add(second)
        sched.schedule()
        assert second.num_cached_tokens == want_hit


def test_a_request_too_big_for_the_upper_pool_is_rejected():
    sched = speed_scheduler(num_blocks=8, max_num_seqs=4, max_num_batched_tokens=8)
    assert sched.block_manager.upper.num_blocks == 4  # upper_pool_fraction 0.5
    with pytest.raises(RequestRejectedError, match="upper KV pool has 4 blocks"):
        sched.add(Sequence(range(4), SimpleNamespace(max_tokens=20)))


# ---- the engine against the oracle ---------------------------------------------------------


@pytest.mark.parametrize("policy", ["chunked", "layered"])
@pytest.mark.parametrize("family", ["qwen3_moe", "llama"])
def test_engine_matches_the_dense_oracle(family, policy, checkpoints):
    path = checkpoints(family)
    num_layers = json.loads((path / "config.json").read_text())["num_hidden_layers"]
    outputs = {}
    mid = num_layers // 2 + 1
    for k, anchors in ((1, 0), (1, 2), (mid, 1), (mid, 2), (num_layers - 1, 0)):
        llm = engine(path, policy, speed={"prefill_layers": k, "anchors": anchors})
        got = [o.token_ids for o in llm.generate(PROMPTS, GREEDY)]
        assert got == oracle(path, k, anchors), (k, anchors)
        outputs[k, anchors] = got
    # the cutoff matters on these weights: the check above could not pass by accident
    assert len({str(v) for v in outputs.values()}) > 1


@pytest.mark.parametrize("family", ["qwen3_moe", "llama"])
def test_k_equal_to_layers_is_the_normal_engine(family, checkpoints):
    path = checkpoints(family)
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True, logprobs=2)
    for policy in ("chunked", "layered"):
        plain = engine(path, policy).generate(PROMPTS, params)
        full = engine(path, policy, speed={"prefill_layers": 1.0}).generate(PROMPTS, params)
        assert [o.token_ids for o in full] == [o.token_ids for o in plain]
        assert [o.logprobs for o in full] == [o.logprobs for o in plain]  # bit for bit


@pytest.mark.parametrize("policy", ["chunked", "layered"])
def test_prefix_caching_and_preemption_keep_oracle_tokens(policy, checkpoints):
    path = checkpoints("qwen3_moe")
    prompts = [[0] + list(range(3, 19)) + [i + 20] for i in range(5)]  # shared 17-token prefix
    params = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)
    for anchors in (0, 1):
        want = oracle(path, 3, anchors, prompts, max_tokens=10)
        speed = {"prefill_layers": 3, "anchors": anchors}
        cached = engine(path, policy, speed=speed, enable_prefix_caching=True)
        outs = cached.generate(prompts, params)
        assert [o.token_ids for o in outs] == want
        if anchors == 0:  # without anchors the lower prefix blocks are shared
            assert any(o.num_cached_tokens > 0 for o in outs)
        # 12 blocks of 4 cannot hold two of these 28-token requests: preempt and recompute
        tight = engine(path, policy, speed=speed, num_gpu_blocks=12)
        assert [o.token_ids for o in tight.generate(prompts, params)] == want
        assert tight.stats.preemptions > 0


def test_checkpoint_config_turns_speed_on(tmp_path, make_checkpoint):
    path = make_checkpoint(tmp_path, "llama", lower_k=2, speed_anchors=0)
    llm = engine(path)
    assert (llm.engine.speed.prefill_layers, llm.engine.speed.anchors) == (2, 0)
    assert [o.token_ids for o in llm.generate(PROMPTS, GREEDY)] == oracle(path, 2, 0)
    explicit = engine(path, speed={"prefill_layers": 3})  # an explicit setting wins
    assert explicit.engine.speed.prefill_layers == 3
    with pytest.raises(ValueError, match="exceeds the model's 3 layers"):
        engine(path, speed={"prefill_layers": 4})


# ---- counters ------------------------------------------------------------------------------


def test_prefill_work_and_prompt_kv_bytes_scale_with_k(tmp_path, make_checkpoint):
    path = make_checkpoint(tmp_path, "llama", num_hidden_layers=8)
    prompt = [0] + list(range(3, 66))  # 64 tokens = 16 blocks of 4
    params = SamplingParams(temperature=0, max_tokens=1, ignore_eos=True)
    stats = {}
    for k in (8, 6):
        llm = LLM(str(path), device="cpu", block_size=4, speed={"prefill_layers": k})
        llm.generate([prompt], params)
        stats[k] = llm.stats
    # K = L: every prompt token through 8 layers; K = 6: 64 x 6 + 2 full-depth tokens x 2
    assert stats[8].prompt_layer_tokens == 64 * 8
    assert stats[6].prompt_layer_tokens == 64 * 6 + 2 * 2
    # KV held: lower 16 blocks x 6 layers + upper 1 block x 2 layers, vs 16 blocks x 8 layers
    ratio = stats[6].peak_kv_bytes / stats[8].peak_kv_bytes
    assert ratio == pytest.approx((16 * 6 + 1 * 2) / (16 * 8))
    assert ratio <= 0.77
