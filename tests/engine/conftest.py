"""Shared fixtures: tiny random HF checkpoints of every supported family.

`make_checkpoint(tmp_path, family, **overrides) -> Path` builds a randomly initialised
`*ForCausalLM` with transformers, perturbs the biases and norm weights (HF initialises them to
0 and 1, which would hide a mis-mapped tensor), and saves it with `save_pretrained` (the hub's
per-expert key layout). Overrides go to the HF config class, except:
    seed (int)            torch seed for the weights (default 0)
    max_shard_size (str)  e.g. "20KB" to write a sharded checkpoint with an index
    name (str)            sub-folder name under tmp_path (default: family, deduplicated)
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

# Odd sizes on purpose: head_dim unlike hidden/heads, GQA ratios 2-4, 5-6 experts, top-3,
# a dense layer inside a Qwen3-MoE model. All tiny: a forward takes milliseconds.
FAMILY_DEFAULTS: dict[str, dict] = {
    "qwen3_moe": dict(
        hidden_size=48,
        num_attention_heads=6,
        num_key_value_heads=2,
        head_dim=24,
        intermediate_size=36,
        moe_intermediate_size=20,
        num_experts=6,
        num_experts_per_tok=3,
        norm_topk_prob=True,
        mlp_only_layers=[1],
        num_hidden_layers=5,
    ),
    "mixtral": dict(
        hidden_size=48,
        num_attention_heads=6,
        num_key_value_heads=2,
        intermediate_size=28,
        num_local_experts=5,
        num_experts_per_tok=2,
        num_hidden_layers=3,
        rope_theta=1e6,
    ),
    "olmoe": dict(
        hidden_size=48,
        num_attention_heads=6,
        num_key_value_heads=2,
        intermediate_size=20,
        num_experts=6,
        num_experts_per_tok=3,
        norm_topk_prob=False,
        clip_qkv=1.5,
        num_hidden_layers=3,
        eos_token_id=1,
    ),
    "llama": dict(
        hidden_size=48,
        num_attention_heads=6,
        num_key_value_heads=3,
        head_dim=12,
        intermediate_size=40,
        attention_bias=True,
        mlp_bias=True,
        num_hidden_layers=3,
    ),
    "qwen3": dict(
        hidden_size=48,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=16,
        intermediate_size=40,
        num_hidden_layers=3,
        tie_word_embeddings=True,
    ),
}
COMMON_DEFAULTS = dict(
    vocab_size=96, max_position_embeddings=256, initializer_range=0.15, bos_token_id=0
)
FAMILIES = tuple(FAMILY_DEFAULTS)


def hf_classes(family: str):
    import transformers as tf

    return {
        "qwen3_moe": (tf.Qwen3MoeConfig, tf.Qwen3MoeForCausalLM),
        "mixtral": (tf.MixtralConfig, tf.MixtralForCausalLM),
        "olmoe": (tf.OlmoeConfig, tf.OlmoeForCausalLM),
        "llama": (tf.LlamaConfig, tf.LlamaForCausalLM),
        "qwen3": (tf.Qwen3Config, tf.Qwen3ForCausalLM),
    }[family]


def build_checkpoint(tmp_path: Path, family: str, **overrides) -> Path:
    if family not in FAMILY_DEFAULTS:
        raise ValueError(f"unknown family {family!r}; known: {', '.join(FAMILIES)}")
    seed = overrides.pop("seed", 0)
    max_shard_size = overrides.pop("max_shard_size", None)
    name = overrides.pop("name", None)
    if name is None:
        name, n = family, 1
        while (tmp_path / name).exists():
            n += 1
            name = f"{family}-{n}"
    config_cls, model_cls = hf_classes(family)
    config = config_cls(**{**COMMON_DEFAULTS, **FAMILY_DEFAULTS[family], **overrides})
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    with torch.no_grad():
        for pname, param in model.named_parameters():
            if pname.endswith("bias"):
                param.normal_(0.0, 0.1)
            elif "norm" in pname:
                param.add_(torch.randn_like(param), alpha=0.1)
    folder = tmp_path / name
    kwargs = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
    model.save_pretrained(folder, **kwargs)
    return folder


@pytest.fixture
def make_checkpoint():
    """The `build_checkpoint(tmp_path, family, **overrides) -> Path` factory."""
    return build_checkpoint


def load_hf_model(path: Path, dtype: torch.dtype = torch.float32):
    """The transformers oracle for a checkpoint folder: eager attention, eval mode."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        path, dtype=dtype, attn_implementation="eager"
    ).eval()


@pytest.fixture
def hf_model():
    """The `load_hf_model(path, dtype=torch.float32)` loader."""
    return load_hf_model


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tiny matmuls with torch's default 2+ threads on a shared 2-core box spend their time
    spin-waiting (measured 30x slower under load); one thread is fastest for test sizes."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
