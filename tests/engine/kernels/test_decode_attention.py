"""Paged decode attention (Triton) against models.attention.paged_attention, the torch path."""

from __future__ import annotations

import pytest
import torch

from lamina_engine.kernels.decode_attention import decode_attention
from lamina_engine.models.attention import AttentionMetadata, paged_attention

from .conftest import TOLERANCE


def _tables(contexts, block_size, num_blocks, gen):
    """Shuffled, disjoint block tables: sequence b owns ceil(ctx_b / BS) random blocks."""
    perm = torch.randperm(num_blocks, generator=gen).tolist()
    tables, i = [], 0
    for c in contexts:
        n = -(-c // block_size)
        tables.append(perm[i : i + n])
        i += n
    return tables


def _check(device, dtype, heads, kv_heads, hd, block_size, contexts, seed=0):
    gen = torch.Generator().manual_seed(seed)
    num_blocks = sum(-(-c // block_size) for c in contexts) + 3
    cache = torch.randn(2, num_blocks, block_size, kv_heads, hd, generator=gen)
    q = torch.randn(len(contexts), heads, hd, generator=gen)
    tables = _tables(contexts, block_size, num_blocks, gen)
    md = AttentionMetadata.build([c - 1 for c in contexts], [1] * len(contexts), tables, block_size)
    cache, q = cache.to(dtype), q.to(dtype)
    ref = paged_attention(q.float(), cache.float(), md.plan)
    out = decode_attention(
        q.to(device), cache.to(device), md.block_tables.to(device), md.context_lens.to(device),
        max(contexts),
    )  # fmt: skip
    assert out.dtype == dtype and out.shape == q.shape
    torch.testing.assert_close(out.float().cpu(), ref, **TOLERANCE[dtype])


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (6, 3), (8, 2)])  # GQA 1, 2, 4
def test_gqa_ratios(device_dtype, heads, kv_heads):
    _check(*device_dtype, heads, kv_heads, 24, 4, [1, 4, 5, 37, 100])


@pytest.mark.parametrize(
    "block_size,contexts",
    [
        (16, [15, 16, 17, 32, 33]),  # around block boundaries
        (1, [1, 2, 9]),  # one token per block
        (5, [64, 65, 97]),  # odd block size, contexts past one split
    ],
)
def test_block_boundaries(device_dtype, block_size, contexts):
    _check(*device_dtype, 4, 2, 32, block_size, contexts, seed=1)


def test_head_dim_128_single_sequence(device_dtype):
    _check(*device_dtype, 8, 4, 128, 16, [70], seed=2)


def test_speed_upper_tables(device_dtype):
    """SPEED: layers >= K read a separate, smaller pool through compact upper tables (anchor +
    decoded tokens); the lower layers read the full prompt. Both through the same kernel."""
    device, dtype = device_dtype
    prompts, decoded = [40, 23], [3, 9]
    _check(device, dtype, 6, 2, 24, 8, [p + d for p, d in zip(prompts, decoded)], seed=3)
    _check(device, dtype, 6, 2, 24, 8, [1 + d for d in decoded], seed=4)  # 1 anchor (BoS)
