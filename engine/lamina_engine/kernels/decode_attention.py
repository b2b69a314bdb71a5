"""Paged decode attention in Triton (one query token per sequence); the torch reference is
models.attention.paged_attention (its decode branch).

Shapes: B decode sequences, H query heads, KV kv heads, G = H // KV, hd head_dim, NB cache
blocks of BS tokens, S KV splits. Cache of one layer: [2, NB, BS, KV, hd]; a sequence's key at
position p sits in block block_tables[b, p // BS], offset p % BS. Under SPEED the upper layers
(>= K) pass their own compact block tables and context lengths (anchor + decoded tokens); the
kernel reads whatever table it is given.

    stage 1  grid (B, KV, S): the G query heads of one kv head as the rows of one tile (so K/V are
             read once per kv head), online softmax over the split's keys, BLOCK_N at a time;
             writes the split's normalised output [G, hd] and its log-sum-exp
    stage 2  grid (B, H): merges the S splits weighted by exp(lse - max lse)

Splitting the context keeps the GPU busy at small batch x long context (B * KV programs alone
would leave most SMs idle); empty splits (short sequences) store lse = -inf and weigh nothing.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from lamina_engine.kernels.launch_config import launch_config


@triton.jit
def _decode_split(
    q_ptr,  # [B, H, hd]
    k_ptr,  # [NB, BS, KV, hd] (strides given)
    v_ptr,
    tables_ptr,  # [B, max_blocks]
    ctx_ptr,  # [B]
    part_out_ptr,  # [B, H, S, HD_PAD] fp32
    part_lse_ptr,  # [B, H, S] fp32
    scale,
    head_dim,
    group,
    split_len,
    block_size,
    stride_qb,
    stride_qh,
    stride_kb,
    stride_ks,
    stride_kh,
    stride_tb,
    G_PAD: tl.constexpr,
    HD_PAD: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PRECISION: tl.constexpr,
):
    b = tl.program_id(0)
    kvh = tl.program_id(1)
    s = tl.program_id(2)
    num_splits = tl.num_programs(2)
    num_heads = tl.num_programs(1) * group
    ctx = tl.load(ctx_ptr + b).to(tl.int32)
    start = s * split_len
    end = tl.minimum(start + split_len, ctx)
    offs_g = tl.arange(0, G_PAD)
    offs_d = tl.arange(0, HD_PAD)
    g_ok = offs_g < group
    d_ok = offs_d < head_dim
    heads = kvh * group + offs_g
    q = tl.load(
        q_ptr + b * stride_qb + heads[:, None] * stride_qh + offs_d[None, :],
        mask=g_ok[:, None] & d_ok[None, :],
        other=0.0,
    )
    m = tl.full((G_PAD,), float("-inf"), tl.float32)
    l_sum = tl.zeros((G_PAD,), tl.float32)
    acc = tl.zeros((G_PAD, HD_PAD), tl.float32)
    table = tables_ptr + b.to(tl.int64) * stride_tb
    for n0 in range(start, end, BLOCK_N):
        pos = n0 + tl.arange(0, BLOCK_N)
        ok = pos < end
        blk = tl.load(table + pos // block_size, mask=ok, other=0).to(tl.int64)
        row = blk * stride_kb + (pos % block_size) * stride_ks + kvh * stride_kh
        kv_mask = ok[:, None] & d_ok[None, :]
        k = tl.load(k_ptr + row[:, None] + offs_d[None, :], mask=kv_mask, other=0.0)
        scores = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale  # [G_PAD, BLOCK_N]
        scores = tl.where(ok[None, :], scores, float("-inf"))
        m_new = tl.maximum(m, tl.max(scores, 1))
        p = tl.exp(scores - m_new[:, None])
        alpha = tl.exp(m - m_new)
        v = tl.load(v_ptr + row[:, None] + offs_d[None, :], mask=kv_mask, other=0.0)
        l_sum = l_sum * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m = m_new
    has = l_sum > 0
    out = acc / tl.where(has, l_sum, 1.0)[:, None]
    lse = tl.where(has, m + tl.log(tl.where(has, l_sum, 1.0)), float("-inf"))
    part = (b * num_heads + heads).to(tl.int64) * num_splits + s
    tl.store(part_out_ptr + part[:, None] * HD_PAD + offs_d[None, :], out, mask=g_ok[:, None])
    tl.store(part_lse_ptr + part, lse, mask=g_ok)


@triton.jit
def _decode_merge(
    part_out_ptr,  # [B, H, S, HD_PAD] fp32
    part_lse_ptr,  # [B, H, S] fp32
    out_ptr,  # [B, H, hd]
    head_dim,
    num_splits,
    stride_ob,
    stride_oh,
    S_PAD: tl.constexpr,
    HD_PAD: tl.constexpr,
):
    b = tl.program_id(0)
    h = tl.program_id(1)
    bh = (b * tl.num_programs(1) + h).to(tl.int64)
    offs_s = tl.arange(0, S_PAD)
    offs_d = tl.arange(0, HD_PAD)
    s_ok = offs_s < num_splits
    lse = tl.load(part_lse_ptr + bh * num_splits + offs_s, mask=s_ok, other=float("-inf"))
    weight = tl.exp(lse - tl.max(lse, 0))  # split 0 always holds keys: max is finite
    parts = tl.load(
        part_out_ptr + (bh * num_splits + offs_s)[:, None] * HD_PAD + offs_d[None, :],
        mask=s_ok[:, None],
        other=0.0,
    )
    out = tl.sum(parts * weight[:, None], 0) / tl.sum(weight, 0)
    dst = out_ptr + b * stride_ob + h * stride_oh + offs_d
    tl.store(dst, out.to(out_ptr.dtype.element_ty), mask=offs_d < head_dim)


def decode_attention(
    q: Tensor,
    kv_cache: Tensor,
    block_tables: Tensor,
    context_lens: Tensor,
    max_context: int,
    scale: float | None = None,
) -> Tensor:
    """q [B, H, hd], kv_cache [2, NB, BS, KV, hd], block_tables [B, max_blocks] (int32/64),
    context_lens [B] (each >= 1; keys this step sees, its own included) -> out [B, H, hd].

    max_context (a host int the caller already knows, e.g. from the step's plan) sizes the
    split grid, so launching reads nothing back from the device."""
    batch, num_heads, hd = q.shape
    _, _, block_size, kv_heads, _ = kv_cache.shape
    if num_heads % kv_heads:
        raise ValueError(f"{num_heads} query heads are not a multiple of {kv_heads} kv heads")
    if kv_cache.stride(-1) != 1 or q.stride(-1) != 1:
        raise ValueError("decode_attention needs q and kv_cache with a contiguous head_dim")
    group = num_heads // kv_heads
    scale = hd**-0.5 if scale is None else scale
    out = torch.empty_like(q)
    if batch == 0:
        return out
    cfg = launch_config("decode_attention", q.device, f"H={num_heads},KV={kv_heads},hd={hd}", batch)
    block_n = cfg["BLOCK_N"]
    split_len = max(cfg["SPLIT_TOKENS"], triton.cdiv(max(max_context, 1), cfg["MAX_SPLITS"]))
    split_len = triton.cdiv(split_len, block_n) * block_n
    num_splits = triton.cdiv(max(max_context, 1), split_len)
    hd_pad = max(16, triton.next_power_of_2(hd))
    part_out = torch.empty(batch, num_heads, num_splits, hd_pad, device=q.device)
    part_lse = torch.empty(batch, num_heads, num_splits, device=q.device)
    keys, values = kv_cache[0], kv_cache[1]
    _decode_split[(batch, kv_heads, num_splits)](
        q, keys, values, block_tables, context_lens, part_out, part_lse,
        scale, hd, group, split_len, block_size,
        q.stride(0), q.stride(1), keys.stride(0), keys.stride(1), keys.stride(2),
        block_tables.stride(0),
        G_PAD=max(16, triton.next_power_of_2(group)), HD_PAD=hd_pad, BLOCK_N=block_n,
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )  # fmt: skip
    _decode_merge[(batch, num_heads)](
        part_out, part_lse, out, hd, num_splits, out.stride(0), out.stride(1),
        S_PAD=max(2, triton.next_power_of_2(num_splits)), HD_PAD=hd_pad, num_warps=4,
    )  # fmt: skip
    return out
