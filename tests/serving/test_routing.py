"""Pickers, the FLOPs estimate, load decay, backend specs and ServeConfig from flags + env."""

from __future__ import annotations

import argparse
import asyncio
import time

import pytest

from lamina_engine.core.block_manager import block_hashes
from lamina_engine.core.layered import split_layers
from lamina_engine.serving.backends import resolve
from lamina_engine.serving.config import add_serve_args, config_from
from lamina_engine.serving.pod_pickers import (
    BackendState,
    DecayingLoad,
    DecodePicker,
    PrefillPicker,
    prefill_flops,
)

MODEL = {"hidden_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4,
         "num_key_value_heads": 2, "num_experts": 8, "num_experts_per_tok": 2,
         "moe_intermediate_size": 32, "vocab_size": 1000}  # fmt: skip


def pods(n: int) -> list[BackendState]:
    return [BackendState(f"10.0.0.{i}:8000", "prefill", role="prefill", ready=True)
            for i in range(n)]  # fmt: skip


def test_flops_grow_with_new_tokens_and_context():
    assert prefill_flops(MODEL, 200) > 2 * prefill_flops(MODEL, 100) * 0.99
    assert prefill_flops(MODEL, 100, cached_tokens=1000) > prefill_flops(MODEL, 100)
    assert prefill_flops(MODEL, 0) == 0


def test_prefix_match_beats_load_and_load_breaks_ties():
    a, b = pods(2)
    prompt = list(range(64))
    hashes = block_hashes(prompt, 16)
    picker = PrefillPicker("prefix-load", MODEL, 16)
    a.load.add(1e12)  # a is busy ...
    b.load.add(1e9)
    assert picker.pick([a, b], hashes, 64)[0] is b
    a.remember(hashes[:3])  # ... but holds 3 of the 4 blocks
    pod, cost = picker.pick([a, b], hashes, 64)
    assert pod is a and cost == pytest.approx(prefill_flops(MODEL, 16, 48))
    assert PrefillPicker("least-load", MODEL, 16).pick([a, b], hashes, 64)[0] is b


def test_round_robin_and_empty_pools():
    a, b = pods(2)
    picker = PrefillPicker("round-robin", MODEL, 16)
    assert [picker.pick([a, b], [], 8)[0] for _ in range(4)] == [a, b, a, b]
    with pytest.raises(LookupError, match="no prefill pod"):
        picker.pick([], [], 8)
    with pytest.raises(LookupError, match="no decode pod"):
        DecodePicker("least-kv").pick([])


def test_decode_picker_prefers_free_kv_then_small_batch():
    a, b, c = pods(3)
    a.kv_usage, b.kv_usage, c.kv_usage = 0.8, 0.2, 0.2
    b.running, c.running = 5, 1
    assert DecodePicker("least-kv").pick([a, b, c]) is c


def test_decode_picker_takes_turns_among_equally_loaded_pods():
    """Sequential requests to idle pods spread over them (a scaled-out pod takes traffic at
    once); a busier pod still gets none."""
    a, b, c = pods(3)
    c.running = 2
    picker = DecodePicker("least-kv")
    assert [picker.pick([a, b, c]) for _ in range(4)] == [a, b, a, b]


def test_load_decays_with_time():
    load = DecayingLoad(decay_s=0.05)
    load.add(100.0)
    assert load.value() == pytest.approx(100.0, rel=0.2)
    time.sleep(0.15)
    assert load.value() < 100.0 * 0.1


def test_backend_specs(tmp_path):
    listing = tmp_path / "list.json"
    listing.write_text('["127.0.0.1:9001", "127.0.0.1:9002"]')
    got = asyncio.run(resolve(f"127.0.0.1:9000,file:{listing},localhost:9003"))
    assert got == ["127.0.0.1:9000", "127.0.0.1:9001", "127.0.0.1:9002", "localhost:9003"]
    assert asyncio.run(resolve(f"file:{tmp_path / 'absent'}")) == []
    with pytest.raises(ValueError, match="HOST:PORT"):
        asyncio.run(resolve("no-port"))


def test_flags_override_environment():
    parser = argparse.ArgumentParser()
    add_serve_args(parser)
    env = {"LAMINA_MAX_NUM_SEQS": "8", "LAMINA_KV_BACKEND": "local",
           "LAMINA_SPEED_PREFILL_LAYERS": "0.5", "LAMINA_SERVED_MODEL_NAME": "from-env",
           "LAMINA_KV_REDIS_PASSWORD": "s3cret"}  # fmt: skip
    cfg = config_from(parser.parse_args(["--role", "decode", "--max-num-seqs", "4"]), env)
    got = (cfg.role, cfg.engine.max_num_seqs, cfg.kv_backend, cfg.engine.speed.prefill_layers)
    assert got == ("decode", 4, "local", 0.5)
    assert cfg.model_name == "from-env" and "s3cret" not in repr(cfg)
    with pytest.raises(ValueError, match="LAMINA_KV_BACKEND"):
        config_from(parser.parse_args([]), {"LAMINA_KV_BACKEND": "tcp"})


def test_split_layers_like_array_split():
    assert split_layers(5, 2) == [(0, 3), (3, 5)]
    assert split_layers(3, 8) == [(0, 1), (1, 2), (2, 3)]
