"""Fused MoE (Triton) against models.moe.experts_forward, the torch path."""

from __future__ import annotations

import pytest
import torch

from lamina_engine.kernels.fused_moe import align_block_size, fused_experts
from lamina_engine.models.moe import experts_forward, route

from .conftest import TOLERANCE


def _case(t, e, k, d, i, device, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(t, d, generator=g)
    w13 = torch.randn(e, 2 * i, d, generator=g) / d**0.5
    w2 = torch.randn(e, d, i, generator=g) / i**0.5
    weights, ids = route(torch.randn(t, e, generator=g), k, renormalize=True)
    x, w13, w2 = (z.to(device, dtype) for z in (x, w13, w2))
    return x, weights.to(device, dtype), ids.to(device), w13, w2


@pytest.mark.parametrize(
    "t,e,k,d,i",
    [
        (1, 4, 1, 16, 8),  # one token, top-1
        (7, 6, 3, 48, 20),  # odd sizes, the test model's shape
        (5, 16, 2, 24, 12),  # most experts empty
        (33, 8, 8, 40, 24),  # top-8 = every expert, tiles crossing BLOCK_M
        (3, 128, 8, 32, 16),  # many experts, few tokens (decode-like)
    ],
)
def test_fused_experts_matches_torch(device_dtype, t, e, k, d, i):
    device, dtype = device_dtype
    x, weights, ids, w13, w2 = _case(t, e, k, d, i, device, dtype)
    out, counts = fused_experts(x, weights, ids, w13, w2)
    ref, ref_counts = experts_forward(x.float(), weights.float(), ids, w13.float(), w2.float())
    assert out.dtype == dtype and out.shape == (t, d)
    torch.testing.assert_close(out.float(), ref, **TOLERANCE[dtype])
    assert torch.equal(counts.long(), ref_counts)


def test_fused_experts_all_tokens_on_one_expert(device_dtype):
    device, dtype = device_dtype
    x, weights, _, w13, w2 = _case(19, 5, 1, 24, 16, device, dtype)
    ids = torch.full((19, 1), 3, device=device)
    out, counts = fused_experts(x, weights, ids, w13, w2)
    ref, _ = experts_forward(x.float(), weights.float(), ids, w13.float(), w2.float())
    torch.testing.assert_close(out.float(), ref, **TOLERANCE[dtype])
    assert counts.tolist() == [0, 0, 0, 19, 0]


def test_align_block_size_layout():
    # pairs (token, slot) -> expert: 0->2, 1->0, 2->2, 3->2, 4->1; block of 2
    ids = torch.tensor([[2], [0], [2], [2], [1]])
    sorted_ids, block_expert, padded, counts = align_block_size(ids, 4, 2)
    pad = 5  # padding marks = number of pairs
    # expert 0: [1, pad]; expert 1: [4, pad]; expert 2: [0, 2, 3, pad]; expert 3: none
    assert sorted_ids[:8].tolist() == [1, pad, 4, pad, 0, 2, 3, pad]
    assert padded.tolist() == [8]
    assert block_expert[:4].tolist() == [0, 1, 2, 2]
    assert (block_expert[4:] == -1).all()
    assert counts.tolist() == [1, 1, 3, 0]
    assert (sorted_ids[8:] == pad).all()
