"""Paged prefill attention (Triton) against the prefill branch of paged_attention (SDPA)."""

from __future__ import annotations

import pytest
import torch

from lamina_engine.kernels.prefill_attention import prefill_attention
from lamina_engine.models.attention import AttentionMetadata, paged_attention

from .conftest import TOLERANCE


def _check(device, dtype, heads, kv_heads, hd, block_size, chunks, seed=0):
    """chunks: (start, q_len) per sequence; q_len 1 = a decode (left to the decode kernel)."""
    gen = torch.Generator().manual_seed(seed)
    need = [-(-(s + n) // block_size) for s, n in chunks]
    num_blocks = sum(need) + 2
    perm = torch.randperm(num_blocks, generator=gen).tolist()
    tables, i = [], 0
    for n in need:
        tables.append(perm[i : i + n])
        i += n
    md = AttentionMetadata.build([s for s, _ in chunks], [n for _, n in chunks], tables, block_size)
    cache = torch.randn(2, num_blocks, block_size, kv_heads, hd, generator=gen).to(dtype)
    q = torch.randn(sum(n for _, n in chunks), heads, hd, generator=gen).to(dtype)
    ref = paged_attention(q.float(), cache.float(), md.plan)
    prefill = [b for b, (_, n) in enumerate(chunks) if n > 1]
    sel = torch.tensor(prefill, dtype=torch.int64)
    starts = md.query_start_loc[sel]
    q_lens = md.query_start_loc[sel + 1] - starts
    out = torch.zeros_like(q).to(device)
    prefill_attention(
        q.to(device), cache.to(device), out, starts.to(device), q_lens.to(device),
        md.context_lens[sel].to(device), md.block_tables[sel].to(device),
        max(n for _, n in chunks),
    )  # fmt: skip
    rows = torch.cat([torch.arange(s, s + n) for s, n in zip(starts.tolist(), q_lens.tolist())])
    torch.testing.assert_close(out.float().cpu()[rows], ref[rows], **TOLERANCE[dtype])
    decode_rows = torch.tensor(
        [s for s, (_, n) in zip(md.query_start_loc.tolist(), chunks) if n == 1]
    )
    if decode_rows.numel():
        assert (out.cpu()[decode_rows] == 0).all()  # rows of other sequences untouched


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (8, 2)])
def test_first_chunks_gqa(device_dtype, heads, kv_heads):
    _check(*device_dtype, heads, kv_heads, 24, 4, [(0, 9), (0, 2), (0, 17)])


def test_later_chunks_and_cached_prefix_beside_decodes(device_dtype):
    # a chunk at 16..35 over a cached prefix, a decode, a chunk crossing block edges at 5..11
    _check(*device_dtype, 6, 3, 32, 8, [(16, 20), (40, 1), (5, 7)], seed=1)
