"""Built-in random-weight checkpoints for benchmarks and tests (no hub access needed).

A config is written with transformers' `save_pretrained` (the hub's per-expert key layout) from
a fixed seed, so every run of a benchmark sees the same weights and the same expert routing.
"""

from __future__ import annotations

from pathlib import Path

# moe-bench: expert weights dominate memory traffic, as in Qwen3-30B-A3B (the paper's model).
# Per layer: 64 experts x 3 x 256 x 256 fp32 = 50 MiB of experts vs 0.75 MiB of attention, so
# expert loads are ~98% of weight bytes; 64 experts top-4 routes 4/64 = 1/16 of the experts per
# token (Qwen3-30B-A3B: 8/128). 8 layers so layered prefill can split a cohort in up to 8 groups.
RANDOM_CONFIGS: dict[str, dict] = {
    "moe-bench": dict(
        vocab_size=4096,
        hidden_size=256,
        intermediate_size=512,
        moe_intermediate_size=256,
        num_hidden_layers=8,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        num_experts=64,
        num_experts_per_tok=4,
        norm_topk_prob=True,
        max_position_embeddings=16384,
        initializer_range=0.1,
        tie_word_embeddings=False,
        decoder_sparse_step=1,
    ),
    # moe-bench-skewed: moe-bench's shapes and seed, its routers biased so expert popularity is
    # Zipf-like and a batch's expert coverage follows Qwen3-30B-A3B's (routing_skew.py).
    "moe-bench-skewed": {},  # moe-bench's config, filled in below
    # vs-hf: 123M parameters (82% experts) for the throughput comparison with HF generate().
    "vs-hf": dict(
        vocab_size=16000,
        hidden_size=512,
        intermediate_size=1536,
        moe_intermediate_size=256,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=64,
        num_experts=32,
        num_experts_per_tok=4,
        norm_topk_prob=True,
        max_position_embeddings=2048,
        initializer_range=0.1,
        tie_word_embeddings=False,
        decoder_sparse_step=1,
    ),
    # tiny: for tests; a few MiB, every step a few milliseconds on CPU.
    "tiny": dict(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        moe_intermediate_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        num_experts=8,
        num_experts_per_tok=2,
        norm_topk_prob=True,
        max_position_embeddings=4096,
        initializer_range=0.1,
        tie_word_embeddings=False,
        decoder_sparse_step=1,
    ),
}
RANDOM_CONFIGS["moe-bench-skewed"] = dict(RANDOM_CONFIGS["moe-bench"])


# Configs whose routers get a calibrated popularity skew after initialisation.
SKEWED_ROUTING = frozenset({"moe-bench-skewed"})


def make_random_model(name: str, folder: str | Path, seed: int = 0) -> Path:
    """Save the random Qwen3-MoE checkpoint `name` into `folder`; returns the folder."""
    if name not in RANDOM_CONFIGS:
        raise ValueError(
            f"unknown random config {name!r}; choose one of: {', '.join(sorted(RANDOM_CONFIGS))}"
        )
    import torch
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    torch.manual_seed(seed)
    model = Qwen3MoeForCausalLM(Qwen3MoeConfig(**RANDOM_CONFIGS[name])).eval()
    if name in SKEWED_ROUTING:
        from lamina_engine.bench.routing_skew import skew_routing

        skew_routing(model, seed)
    # Benchmarks choose output lengths themselves: no EOS, so no request stops early.
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    folder = Path(folder)
    model.save_pretrained(folder)
    return folder
