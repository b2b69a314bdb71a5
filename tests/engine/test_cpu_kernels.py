"""The CPU kernel choices behind the model's matmuls and decode attention give F.linear's and
dense attention's results (fp32: agreement to summation order; bf16: to bf16 rounding)."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from lamina_engine.kernels import cpu_ops
from lamina_engine.models import AttentionMetadata, attention
from lamina_engine.models.attention import paged_attention, write_kv_cache
from lamina_engine.models.layers import Linear, linear


@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 8, 12, 16, 33, 200])
@pytest.mark.parametrize("with_bias", [False, True])
def test_linear_matches_f_linear_for_every_row_count(rows, with_bias):
    g = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, 96, generator=g)
    w = torch.randn(40, 96, generator=g)
    b = torch.randn(40, generator=g) if with_bias else None
    got, want = linear(x, w, b), F.linear(x, w, b)
    assert got.shape == (rows, 40) and got.is_contiguous()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)


def test_linear_takes_non_contiguous_rows_and_bf16():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 64, generator=g)
    w = torch.randn(24, 32, generator=g)
    for x in (base[::2, :32], base[:, ::2], base[:3, 5:37]):  # 3 rows (mm path), strided
        torch.testing.assert_close(linear(x, w), F.linear(x, w), rtol=1e-5, atol=1e-5)
    for rows in (3, 7):  # the mm path, then F.linear
        xb, wb = torch.randn(rows, 32, generator=g).bfloat16(), w.bfloat16()
        got = linear(xb, wb)
        assert got.dtype == torch.bfloat16
        # fp32 reference on the same (bf16-exact) inputs; a bf16 result may be off by bf16's
        # relative precision 2^-8 of the sum of |x_k w_k| (the usual dot-product error bound)
        want = F.linear(xb.float(), wb.float())
        bound = 2**-8 * F.linear(xb.float().abs(), wb.float().abs())
        err = (got.float() - want).abs()
        assert (err <= bound).all(), (err - bound).max()


def test_linear_module_keeps_nn_linear_parameters():
    m = Linear(8, 5, bias=True)
    assert set(m.state_dict()) == {"weight", "bias"}
    x = torch.randn(2, 8)
    torch.testing.assert_close(m(x), F.linear(x, m.weight, m.bias))


def dense_attention(q, k, v, q_pos):
    """q [n, H, hd] at absolute positions q_pos; k, v [C, KV, hd] for positions [0, C)."""
    heads, kv_heads = q.shape[1], k.shape[1]
    k = k.repeat_interleave(heads // kv_heads, dim=1).transpose(0, 1)  # [H, C, hd]
    v = v.repeat_interleave(heads // kv_heads, dim=1).transpose(0, 1)
    mask = torch.arange(k.shape[1])[None, :] <= torch.tensor(q_pos)[:, None]  # [n, C]
    out = F.scaled_dot_product_attention(q.transpose(0, 1), k, v, attn_mask=mask)
    return out.transpose(0, 1)  # [n, H, hd]


@pytest.mark.parametrize("decodes_by", ["cpu-kernel", "torch"])
@pytest.mark.parametrize(("heads", "kv_heads", "head_dim"), [(4, 4, 16), (8, 4, 24), (8, 2, 32)])
def test_paged_attention_decodes_and_chunks_match_dense(
    heads, kv_heads, head_dim, decodes_by, monkeypatch
):
    """Decodes of very different context lengths (unpadded gather) beside prefill chunks, over
    shuffled blocks, against dense attention on each sequence's own keys; the decodes through
    the CPU kernel (kernels/cpu_ops.py) and through the torch gather + bmm path."""
    if decodes_by == "torch":
        monkeypatch.setattr(attention, "_native_decode", lambda q, kv_cache: None)
    elif cpu_ops.cpu_isa() is None:
        pytest.skip("this CPU has neither AVX-512F nor AVX2+FMA: decodes run the torch path")
    else:
        assert cpu_ops.native_ops() is not None, "the CPU kernels did not build (see the log)"
    rng = random.Random(heads * head_dim)
    bs, num_blocks = 8, 96
    cache = torch.zeros(2, num_blocks, bs, kv_heads, head_dim)
    free = list(range(num_blocks))
    rng.shuffle(free)
    # (context already cached, tokens this step): decodes with 1..120 keys, two chunks
    shapes = [(0, 1), (119, 1), (37, 1), (0, 9), (15, 1), (20, 11), (63, 1)]
    tables = []
    for start, n in shapes:
        tables.append([free.pop() for _ in range(-(-(start + n) // bs))])
    ks = [torch.randn(s + n, kv_heads, head_dim) for s, n in shapes]
    vs = [torch.randn(s + n, kv_heads, head_dim) for s, n in shapes]
    md = AttentionMetadata.build([s for s, _ in shapes], [n for _, n in shapes], tables, bs)
    # Fill the cache: earlier positions as if written by previous steps, then this step's.
    for (start, _), table, k, v in zip(shapes, tables, ks, vs, strict=True):
        if start:
            old = AttentionMetadata.build([0], [start], [table], bs)
            write_kv_cache(cache, old.slot_mapping, k[:start], v[:start])
    new_k = torch.cat([k[s:] for (s, _), k in zip(shapes, ks, strict=True)])
    new_v = torch.cat([v[s:] for (s, _), v in zip(shapes, vs, strict=True)])
    write_kv_cache(cache, md.slot_mapping, new_k, new_v)
    q = torch.randn(new_k.shape[0], heads, head_dim)

    out = paged_attention(q, cache, md.plan)

    row = 0
    for (start, n), k, v in zip(shapes, ks, vs, strict=True):
        want = dense_attention(q[row : row + n], k, v, list(range(start, start + n)))
        torch.testing.assert_close(out[row : row + n], want, rtol=1e-5, atol=1e-5)
        row += n


@pytest.mark.parametrize(("k", "n"), [(512, 512), (256, 512), (40, 24), (96, 16000)])
@pytest.mark.parametrize("threads", [1, 2])
def test_linear_rows_do_not_depend_on_how_many_rows_share_the_call(k, n, threads):
    """Batch invariance: a row's result is bitwise the same alone, in any batch, at any offset
    (k = 40: rows 160 bytes apart, so not every slice starts 64-byte aligned) with
    `invariant=True` (EngineConfig.batch_invariant). The default choice by row count (mm for 2-4
    rows, oneDNN otherwise) fails this for M = 1..4 on this CPU build."""
    g = torch.Generator().manual_seed(k + n)
    x, w, b = torch.randn(80, k, generator=g), torch.randn(n, k, generator=g), torch.randn(n)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        whole = linear(x, w, b, invariant=True)
        for start, rows in [(0, 1), (0, 2), (3, 1), (5, 3), (1, 4), (7, 6), (0, 17), (9, 64)]:
            got = linear(x[start : start + rows], w, b, invariant=True)
            assert torch.equal(got, whole[start : start + rows]), (start, rows)
    finally:
        torch.set_num_threads(before)
