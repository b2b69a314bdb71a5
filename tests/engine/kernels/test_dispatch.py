"""kernels="triton" | "torch": the whole engine on either path gives the same greedy tokens.

Tiny random Qwen3-MoE (fp32) under Triton's interpreter: chunked and layered scheduling, with
and without SPEED. The interpreter runs every kernel program in numpy, so only the chunked case
without SPEED runs in the fast suite; the others are marked slow.
"""

from __future__ import annotations

import pytest
import torch

from lamina_engine import LLM, SamplingParams
from lamina_engine.kernels.dispatch import set_kernels
from lamina_engine.models import AttentionMetadata, CausalLM, allocate_kv_caches

PROMPTS = [[5, 9, 2, 7, 11, 3, 8, 1, 4], [17, 2], [6, 6, 1, 9, 2]]
POLICY_ARGS = {
    "chunked": dict(max_num_batched_tokens=6, max_num_seqs=3),  # the 9-token prompt is chunked
    "layered": dict(layered_group_tokens=4, layered_budget=8, max_num_seqs=3),  # groups, cohorts
}
_CHECKPOINT: dict[str, object] = {}


@pytest.fixture
def qwen3_moe(make_checkpoint, tmp_path_factory):
    if "path" not in _CHECKPOINT:
        # 3 layers (one dense), block size 4: short runs, contexts crossing blocks.
        _CHECKPOINT["path"] = make_checkpoint(
            tmp_path_factory.mktemp("qwen3_moe"), "qwen3_moe", num_hidden_layers=3
        )
    return _CHECKPOINT["path"]


def _generate(path, kernels, policy, speed=None, max_tokens=4):
    llm = LLM(
        str(path), device="cpu", block_size=4, kernels=kernels, scheduling_policy=policy,
        speed=speed, **POLICY_ARGS[policy],
    )  # fmt: skip
    outs = llm.generate(PROMPTS, SamplingParams(max_tokens=max_tokens, temperature=0))
    return [o.token_ids for o in outs], llm.stats


def _same_tokens(path, policy, speed=None):
    torch_tokens, torch_stats = _generate(path, "torch", policy, speed)
    triton_tokens, triton_stats = _generate(path, "triton", policy, speed)
    assert triton_tokens == torch_tokens
    # expert traffic counted on the device (Triton path) equals the torch path's host count
    assert triton_stats.expert_bytes_loaded == torch_stats.expert_bytes_loaded > 0


def test_chunked_greedy_tokens_match_torch(qwen3_moe):
    _same_tokens(qwen3_moe, "chunked")


@pytest.mark.slow
def test_layered_greedy_tokens_match_torch(qwen3_moe):
    _same_tokens(qwen3_moe, "layered")


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["chunked", "layered"])
def test_speed_greedy_tokens_match_torch(qwen3_moe, policy):
    _same_tokens(qwen3_moe, policy, speed={"prefill_layers": 2, "anchors": 1})


def test_kernel_setting_resolves(qwen3_moe):
    assert LLM(str(qwen3_moe), device="cpu", kernels="auto").engine.kernels == "torch"  # CPU
    assert LLM(str(qwen3_moe), device="cpu", kernels="triton").engine.kernels == "triton"
    with pytest.raises(ValueError, match="kernels"):
        LLM(str(qwen3_moe), device="cpu", kernels="cuda")


def test_triton_layer_loop_reads_nothing_back(qwen3_moe, monkeypatch):
    """No .tolist()/.item()/int()/bool() on a tensor inside the layer loop on the Triton path
    (each is a device sync on CUDA): the count is the same for one layer as for all of them
    (the torch path's MoE reads its expert counts back in every MoE layer)."""
    model = CausalLM.from_pretrained(qwen3_moe)
    set_kernels(model, "triton")
    caches = allocate_kv_caches(model.config, 8, 4, torch.float32, "cpu")
    # two sequences: a 5-token prefill chunk and a decode at position 6
    md = AttentionMetadata.build([0, 6], [5, 1], [[0, 1], [2, 3]], 4)
    ids = torch.tensor([3, 1, 4, 1, 5, 9])
    positions = torch.tensor([0, 1, 2, 3, 4, 6])
    reads = []
    for name in ("tolist", "item", "__int__", "__bool__", "__float__", "__index__"):
        original = getattr(torch.Tensor, name)

        def counted(self, *a, _original=original, _name=name, **kw):
            reads.append(_name)
            return _original(self, *a, **kw)

        monkeypatch.setattr(torch.Tensor, name, counted)

    def count(end):
        reads.clear()
        model.forward_layers(0, end, positions, model.embed(ids), None, md, caches)
        return len(reads)

    assert count(1) == count(model.num_layers)
