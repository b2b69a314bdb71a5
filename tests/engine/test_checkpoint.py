"""Checkpoint loading: sharded == single file, and every broken folder gives a CheckpointError
whose message names the file or tensor at fault."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from lamina_engine.models import CausalLM, CheckpointError, ModelConfig, load_checkpoint
from lamina_engine.models.checkpoint import INDEX_FILE


@pytest.fixture
def qwen3_moe(tmp_path, make_checkpoint):
    return make_checkpoint(tmp_path, "qwen3_moe")


def edit_config(path, **changes):
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(changes)
    (path / "config.json").write_text(json.dumps(cfg))


def rewrite_weights(path, edit):
    tensors = load_file(path / "model.safetensors")
    edit(tensors)
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})


@pytest.mark.parametrize("family", ["qwen3_moe", "mixtral"])
def test_sharded_checkpoint_loads_identically(tmp_path, make_checkpoint, family):
    single = make_checkpoint(tmp_path, family, seed=3, name="single")
    sharded = make_checkpoint(tmp_path, family, seed=3, name="sharded", max_shard_size="30KB")
    assert (sharded / INDEX_FILE).is_file() and not (sharded / "model.safetensors").exists()
    assert len(list(sharded.glob("*.safetensors"))) > 2
    _, a = load_checkpoint(single)
    config, b = load_checkpoint(sharded)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    e, i, d = config.num_experts, config.moe_intermediate_size, config.hidden_size
    assert b["layers.0.mlp.w13"].shape == (e, 2 * i, d)
    assert b["layers.0.mlp.w2"].shape == (e, d, i)


def test_expert_stacking_follows_gate_then_up(qwen3_moe):
    raw = load_file(qwen3_moe / "model.safetensors")
    _, sd = load_checkpoint(qwen3_moe)
    w13, w2 = sd["layers.2.mlp.w13"], sd["layers.2.mlp.w2"]
    i = w13.shape[1] // 2
    assert torch.equal(w13[4, :i], raw["model.layers.2.mlp.experts.4.gate_proj.weight"])
    assert torch.equal(w13[4, i:], raw["model.layers.2.mlp.experts.4.up_proj.weight"])
    assert torch.equal(w2[5], raw["model.layers.2.mlp.experts.5.down_proj.weight"])


def test_fused_expert_layout_loads_like_per_expert(qwen3_moe, tmp_path):
    _, expected = load_checkpoint(qwen3_moe)

    def fuse(tensors):
        for layer in (0, 2, 3, 4):
            p = f"model.layers.{layer}.mlp.experts"
            gate_up, down = [], []
            for e in range(6):
                gate_up.append(
                    torch.cat(
                        [
                            tensors.pop(f"{p}.{e}.gate_proj.weight"),
                            tensors.pop(f"{p}.{e}.up_proj.weight"),
                        ]
                    )
                )
                down.append(tensors.pop(f"{p}.{e}.down_proj.weight"))
            tensors[f"{p}.gate_up_proj"] = torch.stack(gate_up)
            tensors[f"{p}.down_proj"] = torch.stack(down)

    rewrite_weights(qwen3_moe, fuse)
    _, got = load_checkpoint(qwen3_moe)
    assert all(torch.equal(expected[k], got[k]) for k in expected)


def test_dtype_and_tied_head(tmp_path, make_checkpoint):
    path = make_checkpoint(tmp_path, "qwen3", tie_word_embeddings=True)
    assert "lm_head.weight" not in load_file(path / "model.safetensors")
    model = CausalLM.from_pretrained(path, dtype=torch.float16)
    assert model.lm_head is None and model.embed_tokens.weight.dtype == torch.float16


def test_config_fields(qwen3_moe, tmp_path, make_checkpoint):
    c = ModelConfig.from_hf_dict(json.loads((qwen3_moe / "config.json").read_text()))
    assert (c.num_layers, c.num_heads, c.num_kv_heads, c.head_dim) == (5, 6, 2, 24)
    assert (c.num_experts, c.num_experts_per_tok, c.moe_intermediate_size) == (6, 3, 20)
    assert c.qk_norm == "per_head" and c.norm_topk_prob and c.mlp_only_layers == (1,)
    assert c.expert_bytes(torch.bfloat16) == 3 * 48 * 20 * 2
    olmoe = load_checkpoint(make_checkpoint(tmp_path, "olmoe"))[0]
    assert (olmoe.qk_norm, olmoe.clip_qkv, olmoe.head_dim, olmoe.eos_token_ids) == (
        "full",
        1.5,
        8,
        (1,),
    )
    hub_style = {  # pre-transformers-5 keys: rope_theta + rope_scaling with "type"
        "model_type": "llama",
        "vocab_size": 10,
        "hidden_size": 8,
        "intermediate_size": 16,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "rope_theta": 5e5,
        "rope_scaling": {"type": "linear", "factor": 4.0},
    }
    rope = ModelConfig.from_hf_dict(hub_style).rope
    assert (rope.rope_type, rope.factor, rope.theta) == ("linear", 4.0, 5e5)


def test_missing_folder(tmp_path):
    with pytest.raises(CheckpointError, match="nowhere"):
        CausalLM.from_pretrained(tmp_path / "nowhere")


def test_missing_config(qwen3_moe):
    (qwen3_moe / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json is missing"):
        load_checkpoint(qwen3_moe)


def test_malformed_config(qwen3_moe):
    (qwen3_moe / "config.json").write_text('{"model_type": "qwen3_moe",')
    with pytest.raises(CheckpointError, match="config.json is not valid JSON"):
        load_checkpoint(qwen3_moe)


def test_unknown_model_type_names_supported_ones(qwen3_moe):
    edit_config(qwen3_moe, model_type="gpt2")
    with pytest.raises(CheckpointError, match="'gpt2' is not supported.*qwen3_moe, mixtral"):
        load_checkpoint(qwen3_moe)


@pytest.mark.parametrize("rope_type", ["dynamic", "yarn"])
def test_unsupported_rope_scaling(tmp_path, make_checkpoint, rope_type):
    path = make_checkpoint(tmp_path, "llama")
    edit_config(path, rope_parameters={"rope_type": rope_type, "factor": 2.0, "rope_theta": 1e4})
    with pytest.raises(CheckpointError, match=f"'{rope_type}' is not supported.*llama3"):
        load_checkpoint(path)


def test_no_weights(qwen3_moe):
    (qwen3_moe / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no weights in .*model.safetensors"):
        load_checkpoint(qwen3_moe)


def test_index_naming_a_missing_shard(tmp_path, make_checkpoint):
    path = make_checkpoint(tmp_path, "mixtral", max_shard_size="30KB")
    shard = json.loads((path / INDEX_FILE).read_text())["weight_map"]["model.norm.weight"]
    (path / shard).unlink()
    with pytest.raises(CheckpointError, match=f"to shard {shard}, which is not in"):
        load_checkpoint(path)


def test_missing_tensor(qwen3_moe):
    rewrite_weights(qwen3_moe, lambda t: t.pop("model.layers.3.mlp.experts.5.up_proj.weight"))
    with pytest.raises(CheckpointError, match="missing.*layers.3.mlp.experts.5.up_proj.weight"):
        load_checkpoint(qwen3_moe)


def test_unexpected_tensor(qwen3_moe):
    rewrite_weights(qwen3_moe, lambda t: t.update({"model.layers.0.extra.weight": torch.ones(2)}))
    with pytest.raises(CheckpointError, match="not used.*model.layers.0.extra.weight"):
        load_checkpoint(qwen3_moe)


def test_shape_mismatch_names_tensor_and_shapes(qwen3_moe):
    rewrite_weights(qwen3_moe, lambda t: t.update({"model.norm.weight": torch.ones(47)}))
    with pytest.raises(CheckpointError, match=r"model.norm.weight .*\(47,\).*implies \(48,\)"):
        load_checkpoint(qwen3_moe)


def test_config_disagreeing_with_weights(qwen3_moe):
    edit_config(qwen3_moe, moe_intermediate_size=24)
    with pytest.raises(
        CheckpointError, match=r"experts.0.gate_proj.weight .*\(20, 48\).*\(24, 48\)"
    ):
        load_checkpoint(qwen3_moe)
