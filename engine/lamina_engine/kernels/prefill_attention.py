"""Causal attention of prefill chunks over the paged KV cache, in Triton; the torch reference is
the prefill branch of models.attention.paged_attention (SDPA per chunk with a position mask).

Shapes: T tokens in the step, Bp prefill chunks (sequences with more than one query token), H
query heads, KV kv heads, G = H // KV, hd head_dim, cache of one layer [2, NB, BS, KV, hd].
Chunk c owns query rows [starts[c], starts[c] + q_lens[c]) of q [T, H, hd] at positions
[contexts[c] - q_lens[c], contexts[c]); its keys are positions [0, contexts[c]) (earlier chunks
and cached prefixes included, its own K/V already stored), read through tables[c]. Query at
position p sees keys <= p.

Grid (Bp, ceil(max q_len / BLOCK_M), H): a BLOCK_M x hd query tile of one head, online softmax
over keys BLOCK_N at a time up to the tile's last position; tiles past a chunk's q_len exit.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from lamina_engine.kernels.launch_config import launch_config


@triton.jit
def _prefill_attention(
    q_ptr,  # [T, H, hd]
    k_ptr,  # [NB, BS, KV, hd]
    v_ptr,
    out_ptr,  # [T, H, hd]
    starts_ptr,  # [Bp] first query row
    q_lens_ptr,  # [Bp]
    contexts_ptr,  # [Bp]
    tables_ptr,  # [Bp, max_blocks]
    scale,
    head_dim,
    group,
    block_size,
    stride_qt,
    stride_qh,
    stride_ot,
    stride_oh,
    stride_kb,
    stride_ks,
    stride_kh,
    stride_tb,
    HD_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PRECISION: tl.constexpr,
):
    c = tl.program_id(0)
    tile = tl.program_id(1)
    h = tl.program_id(2)
    q_len = tl.load(q_lens_ptr + c).to(tl.int32)
    if tile * BLOCK_M >= q_len:
        return
    row0 = tl.load(starts_ptr + c).to(tl.int64) + tile * BLOCK_M
    ctx = tl.load(contexts_ptr + c).to(tl.int32)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HD_PAD)
    m_ok = tile * BLOCK_M + offs_m < q_len
    d_ok = offs_d < head_dim
    q_pos = ctx - q_len + tile * BLOCK_M + offs_m  # [BLOCK_M] absolute positions
    q = tl.load(
        q_ptr + (row0 + offs_m)[:, None] * stride_qt + h * stride_qh + offs_d[None, :],
        mask=m_ok[:, None] & d_ok[None, :],
        other=0.0,
    )
    kvh = h // group
    table = tables_ptr + c.to(tl.int64) * stride_tb
    key_end = tl.minimum(ctx - q_len + (tile + 1) * BLOCK_M, ctx)  # past the tile's last query
    m = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l_sum = tl.zeros((BLOCK_M,), tl.float32)
    acc = tl.zeros((BLOCK_M, HD_PAD), tl.float32)
    for n0 in range(0, key_end, BLOCK_N):
        pos = n0 + tl.arange(0, BLOCK_N)
        ok = pos < key_end
        blk = tl.load(table + pos // block_size, mask=ok, other=0).to(tl.int64)
        row = blk * stride_kb + (pos % block_size) * stride_ks + kvh * stride_kh
        kv_mask = ok[:, None] & d_ok[None, :]
        k = tl.load(k_ptr + row[:, None] + offs_d[None, :], mask=kv_mask, other=0.0)
        scores = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale  # [BLOCK_M, BLOCK_N]
        visible = ok[None, :] & (pos[None, :] <= q_pos[:, None])
        scores = tl.where(visible, scores, float("-inf"))
        # rows past q_len see nothing: keep their max finite so exp() stays 0, not nan
        m_new = tl.maximum(m, tl.max(scores, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp(scores - m_safe[:, None])
        alpha = tl.exp(m - m_safe)
        v = tl.load(v_ptr + row[:, None] + offs_d[None, :], mask=kv_mask, other=0.0)
        l_sum = l_sum * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m = m_new
    out = acc / tl.where(l_sum > 0, l_sum, 1.0)[:, None]
    dst = out_ptr + (row0 + offs_m)[:, None] * stride_ot + h * stride_oh + offs_d[None, :]
    tl.store(dst, out.to(out_ptr.dtype.element_ty), mask=m_ok[:, None] & d_ok[None, :])


def prefill_attention(
    q: Tensor,
    kv_cache: Tensor,
    out: Tensor,
    starts: Tensor,
    q_lens: Tensor,
    contexts: Tensor,
    tables: Tensor,
    max_q_len: int,
    scale: float | None = None,
) -> None:
    """Writes the prefill chunks' rows of out [T, H, hd] (other rows untouched); q [T, H, hd],
    kv_cache [2, NB, BS, KV, hd], starts/q_lens/contexts [Bp], tables [Bp, max_blocks].
    max_q_len (a host int) sizes the grid."""
    num_chunks = starts.numel()
    if num_chunks == 0:
        return
    _, num_heads, hd = q.shape
    _, _, block_size, kv_heads, _ = kv_cache.shape
    if num_heads % kv_heads:
        raise ValueError(f"{num_heads} query heads are not a multiple of {kv_heads} kv heads")
    if kv_cache.stride(-1) != 1 or q.stride(-1) != 1 or out.stride(-1) != 1:
        raise ValueError("prefill_attention needs q, out and kv_cache with a contiguous head_dim")
    scale = hd**-0.5 if scale is None else scale
    cfg = launch_config("prefill_attention", q.device, f"hd={hd}", max_q_len)
    keys, values = kv_cache[0], kv_cache[1]
    grid = (num_chunks, triton.cdiv(max_q_len, cfg["BLOCK_M"]), num_heads)
    _prefill_attention[grid](
        q, keys, values, out, starts, q_lens, contexts, tables,
        scale, hd, num_heads // kv_heads, block_size,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        keys.stride(0), keys.stride(1), keys.stride(2), tables.stride(0),
        HD_PAD=max(16, triton.next_power_of_2(hd)), BLOCK_M=cfg["BLOCK_M"],
        BLOCK_N=cfg["BLOCK_N"], PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )  # fmt: skip
