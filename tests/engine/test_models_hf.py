"""CausalLM against HF transformers on the same random weights (fp32, eager attention).

Several prompts of different lengths run together in one forward over a fresh paged cache
(block size 4, shuffled block ids); one prompt is prefilled in two chunks, its second chunk
sharing a step with the others' decodes; then several decode steps batch all sequences. Every
computed token's logits must be within 1e-4 of HF's on the full sequence.
"""

from __future__ import annotations

import random

import pytest
import torch

from lamina_engine.models import AttentionMetadata, CausalLM, allocate_kv_caches

TOL = 1e-4
FAMILIES = ("qwen3_moe", "mixtral", "olmoe", "llama", "qwen3")
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
    "rope_theta": 10000.0,
}
CASES = [(family, {}) for family in FAMILIES] + [
    ("llama", {"rope_scaling": LLAMA3_ROPE, "tie_word_embeddings": True}),
    ("llama", {"rope_scaling": {"rope_type": "linear", "factor": 2.5, "rope_theta": 5e5}}),
    ("qwen3_moe", {"decoder_sparse_step": 2, "mlp_only_layers": [], "norm_topk_prob": False}),
    ("mixtral", {"num_local_experts": 4, "num_experts_per_tok": 3, "num_key_value_heads": 6}),
]


class PagedRunner:
    """Drives CausalLM the way the model runner will: block tables, slots, one step at a time."""

    def __init__(self, model: CausalLM, block_size: int = 4, num_blocks: int = 80, seed: int = 0):
        self.model, self.block_size = model, block_size
        self.caches = allocate_kv_caches(model.config, num_blocks, block_size, torch.float32, "cpu")
        self.free = list(range(num_blocks))
        random.Random(seed).shuffle(self.free)  # non-contiguous, out-of-order block tables
        self.tables: dict[int, list[int]] = {}

    def step(self, chunks: list[tuple[int, int, list[int]]]) -> torch.Tensor:
        """chunks: (seq id, start position, token ids) -> logits [T, V] for every token."""
        for seq, start, tokens in chunks:
            table = self.tables.setdefault(seq, [])
            while len(table) * self.block_size < start + len(tokens):
                table.append(self.free.pop())
        md = AttentionMetadata.build(
            [start for _, start, _ in chunks],
            [len(tokens) for _, _, tokens in chunks],
            [self.tables[seq] for seq, _, _ in chunks],
            self.block_size,
        )
        ids = torch.tensor([t for _, _, tokens in chunks for t in tokens])
        positions = torch.cat([torch.arange(s, s + len(t)) for _, s, t in chunks])
        hidden = self.model(ids, positions, md, self.caches)
        return self.model.compute_logits(hidden)


def hf_logits(hf, tokens: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return hf(input_ids=torch.tensor([tokens])).logits[0].float()


@pytest.mark.parametrize(("family", "overrides"), CASES, ids=lambda c: str(c)[:40])
def test_logits_match_hf_prefill_and_decode(tmp_path, make_checkpoint, hf_model, family, overrides):
    path = make_checkpoint(tmp_path, family, **overrides)
    ours, hf = CausalLM.from_pretrained(path), hf_model(path)
    rng = random.Random(1)
    lengths = [9, 1, 17, 6, 14]
    seqs = [[rng.randrange(ours.config.vocab_size) for _ in range(n)] for n in lengths]
    runner = PagedRunner(ours)

    # Step 0: all prompts at once, except the last, which gets only its first 5 tokens.
    split = 5
    chunks = [(i, 0, s) for i, s in enumerate(seqs[:-1])] + [(4, 0, seqs[4][:split])]
    logits = runner.step(chunks)
    offset = 0
    for seq, _, tokens in chunks:
        expected = hf_logits(hf, tokens)
        got = logits[offset : offset + len(tokens)]
        assert (got - expected).abs().max().item() <= TOL, f"prefill of seq {seq}"
        offset += len(tokens)

    computed = [len(s) for s in seqs[:-1]] + [split]
    for _ in range(4):
        # Sequences 0-3 decode their HF-greedy next token; sequence 4 finishes its prompt.
        chunks = []
        for i, seq in enumerate(seqs):
            if computed[i] == len(seq):
                seq.append(int(hf_logits(hf, seq)[-1].argmax()))
            chunks.append((i, computed[i], seq[computed[i] :]))
        logits = runner.step(chunks)
        offset = 0
        for (i, start, tokens), seq in zip(chunks, seqs, strict=True):
            expected = hf_logits(hf, seq)[start:]
            got = logits[offset : offset + len(tokens)]
            assert (got - expected).abs().max().item() <= TOL, f"decode of seq {i} at {start}"
            assert torch.equal(got.argmax(-1), expected.argmax(-1))
            offset += len(tokens)
            computed[i] = len(seq)


def test_layer_ranges_compose_like_a_full_forward(tmp_path, make_checkpoint):
    """Running layers in groups (layered prefill) gives the same hidden states as one pass."""
    path = make_checkpoint(tmp_path, "qwen3_moe")
    model = CausalLM.from_pretrained(path)
    assert model.config.moe_layers == [0, 2, 3, 4]  # layer 1 is dense (mlp_only_layers)
    ids = torch.randint(0, model.config.vocab_size, (11,))
    positions = torch.arange(11)

    def run(groups):
        caches = allocate_kv_caches(model.config, 8, 4, torch.float32, "cpu")
        md = AttentionMetadata.build([0], [11], [[5, 2, 7]], 4)
        hidden, residual = model.embed(ids), None
        for start, end in groups:
            hidden, residual = model.forward_layers(
                start, end, positions, hidden, residual, md, caches
            )
        return model.final_norm(hidden, residual), caches

    full, caches_full = run([(0, 5)])
    grouped, caches_grouped = run([(0, 2), (2, 3), (3, 5)])
    assert torch.equal(full, grouped)
    assert all(torch.equal(a, b) for a, b in zip(caches_full, caches_grouped, strict=True))
    with pytest.raises(ValueError, match="layer range"):
        model.forward_layers(3, 6, positions, full, full, None, caches_full)


def test_expert_stats_count_active_experts_and_bytes(tmp_path, make_checkpoint):
    path = make_checkpoint(tmp_path, "olmoe", num_experts=6, num_experts_per_tok=3)
    model = CausalLM.from_pretrained(path)
    caches = allocate_kv_caches(model.config, 4, 4, torch.float32, "cpu")
    md = AttentionMetadata.build([0], [1], [[3]], 4)
    model(torch.tensor([5]), torch.tensor([0]), md, caches)
    stats, n_moe = model.expert_stats, len(model.config.moe_layers)
    # One token routes to exactly top_k distinct experts in each MoE layer.
    assert (stats.moe_calls, stats.experts_loaded) == (n_moe, 3 * n_moe)
    per_expert = model.config.expert_bytes(torch.float32)
    assert per_expert == 3 * 48 * 20 * 4
    assert stats.bytes_loaded == 3 * n_moe * per_expert
    stats.reset()
    assert stats.bytes_loaded == stats.experts_loaded == stats.moe_calls == 0


def test_bf16_load_runs_and_tracks_fp32(tmp_path, make_checkpoint):
    path = make_checkpoint(tmp_path, "qwen3_moe")
    bf16 = CausalLM.from_pretrained(path, dtype=torch.bfloat16)
    fp32 = CausalLM.from_pretrained(path)
    assert all(p.dtype == torch.bfloat16 for p in bf16.parameters())
    ids = torch.randint(0, bf16.config.vocab_size, (12,))
    md = AttentionMetadata.build([0, 0], [7, 5], [[1, 0], [3, 2]], 4)
    out = {}
    for name, model, dtype in (("bf16", bf16, torch.bfloat16), ("fp32", fp32, torch.float32)):
        caches = allocate_kv_caches(model.config, 4, 4, dtype, "cpu")
        positions = torch.cat([torch.arange(7), torch.arange(5)])
        out[name] = model.compute_logits(model(ids, positions, md, caches))
    assert out["bf16"].dtype == torch.float32 and out["bf16"].shape == (12, 96)
    assert torch.isfinite(out["bf16"]).all()
    assert (out["bf16"] - out["fp32"]).abs().max() < 0.25 * out["fp32"].abs().max()


def test_attention_metadata_build_maps_positions_to_slots():
    md = AttentionMetadata.build([0, 6], [3, 1], [[7, 2], [4, 1]], block_size=4)
    # seq 0: positions 0-2 in block 7; seq 1: position 6 is offset 2 of its second block (1).
    assert md.slot_mapping.tolist() == [28, 29, 30, 6]
    assert md.query_start_loc.tolist() == [0, 3, 4]
    assert md.context_lens.tolist() == [3, 7]
    assert md.block_tables.tolist() == [[7, 2], [4, 1]]
    with pytest.raises(ValueError, match="needs 3 blocks"):
        AttentionMetadata.build([8], [1], [[0, 1]], block_size=4)
