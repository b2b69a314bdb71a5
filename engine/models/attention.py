"""GQA attention over the paged KV cache (the torch path) and the metadata that drives it.

Shapes: T tokens in the step, B sequences, H query heads, KV kv heads, G = H // KV,
hd head_dim, NB cache blocks of BS tokens, C context length (tokens in cache).
KV cache of one layer: [2, NB, BS, KV, hd]; slot s = block * BS + offset.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class AttentionMetadata:  # T tokens in the step, B sequences
    slot_mapping: Tensor  # [T] int64, cache slot each token's K/V is written to
    query_start_loc: Tensor  # [B+1] int64, cumulative query lengths (tokens grouped by seq)
    context_lens: Tensor  # [B] int64, tokens in cache for each seq after this step
    block_tables: Tensor  # [B, max_blocks] int64 (padded with 0)
    block_size: int

    @staticmethod
    def build(
        seq_starts: Sequence[int],
        seq_query_lens: Sequence[int],
        block_tables: Sequence[Sequence[int]],
        block_size: int,
        device: torch.device | str = "cpu",
    ) -> AttentionMetadata:
        """From per-sequence ints: sequence b computes positions
        [seq_starts[b], seq_starts[b] + seq_query_lens[b]) and owns blocks block_tables[b]."""
        if not len(seq_starts) == len(seq_query_lens) == len(block_tables):
            raise ValueError(
                f"seq_starts ({len(seq_starts)}), seq_query_lens ({len(seq_query_lens)}) and "
                f"block_tables ({len(block_tables)}) must have one entry per sequence"
            )
        slots: list[int] = []
        for start, q_len, table in zip(seq_starts, seq_query_lens, block_tables, strict=True):
            if q_len < 1 or start < 0:
                raise ValueError(f"bad chunk: start={start}, query length={q_len}")
            end = start + q_len
            if end > len(table) * block_size:
                raise ValueError(
                    f"a sequence reaching position {end - 1} needs "
                    f"{(end + block_size - 1) // block_size} blocks of {block_size}, "
                    f"its block table has {len(table)}"
                )
            slots += [
                table[p // block_size] * block_size + p % block_size for p in range(start, end)
            ]
        max_blocks = max((len(t) for t in block_tables), default=0)
        padded = [list(t) + [0] * (max_blocks - len(t)) for t in block_tables]
        cum = [0]
        for q_len in seq_query_lens:
            cum.append(cum[-1] + q_len)

        def as_tensor(values: list) -> Tensor:
            return torch.tensor(values, dtype=torch.int64, device=device)

        return AttentionMetadata(
            slot_mapping=as_tensor(slots),
            query_start_loc=as_tensor(cum),
            context_lens=as_tensor(
                [s + q for s, q in zip(seq_starts, seq_query_lens, strict=True)]
            ),
            block_tables=as_tensor(padded).reshape(len(block_tables), max_blocks),
            block_size=block_size,
        )


@dataclass
class _Prefill:  # one sequence with several query tokens
    token_start: int
    q_len: int
    blocks: Tensor  # [nb] cache blocks holding the sequence's context, in position order
    mask: Tensor  # [q_len, nb * BS] bool, True where the query may attend


@dataclass
class AttentionPlan:
    """Gather indices and masks derived once per forward from AttentionMetadata; shared by
    every layer (they read the same block tables).

    K/V are gathered a whole block at a time (one index_select of contiguous [BS, KV, hd]
    chunks: ~10x faster on CPU than gathering per slot). Single-token queries (decodes) run
    as one padded SDPA call; each multi-token sequence (a prefill chunk) as its own call.
    """

    decode_tokens: Tensor  # [Bd] token index of each single-token query
    decode_blocks: Tensor  # [Bd, nb_max] cache blocks, padded with block 0
    decode_mask: Tensor  # [Bd, 1, 1, nb_max * BS] bool, True for real keys
    prefills: list[_Prefill]
    max_gather_blocks: int = 0  # blocks one SDPA call gathers at most (workspace size)
    _workspace: Tensor | None = None  # [2, max_gather_blocks, BS, KV, hd], made on first use

    def workspace(self, kv_cache: Tensor) -> Tensor:
        """K/V gather buffer shared by every layer of this forward (same shape and dtype)."""
        ws = self._workspace
        shape = (2, self.max_gather_blocks, *kv_cache.shape[2:])
        if ws is None or ws.shape != shape or ws.dtype != kv_cache.dtype:
            ws = torch.empty(shape, dtype=kv_cache.dtype, device=kv_cache.device)
            self._workspace = ws
        return ws

    @staticmethod
    def from_metadata(md: AttentionMetadata) -> AttentionPlan:
        device = md.slot_mapping.device
        starts = md.query_start_loc.tolist()
        ctx_lens = md.context_lens.tolist()
        bs = md.block_size
        decode_rows, prefills = [], []
        for b, ctx in enumerate(ctx_lens):
            q_len = starts[b + 1] - starts[b]
            if q_len == 1:
                decode_rows.append(b)
                continue
            n_blocks = (ctx + bs - 1) // bs
            # query i sits at position ctx - q_len + i and sees keys at positions <= it
            q_pos = torch.arange(ctx - q_len, ctx, device=device)
            mask = torch.arange(n_blocks * bs, device=device)[None, :] <= q_pos[:, None]
            prefills.append(_Prefill(starts[b], q_len, md.block_tables[b, :n_blocks], mask))

        rows = torch.tensor(decode_rows, dtype=torch.int64, device=device)
        n_blocks = (max((ctx_lens[b] for b in decode_rows), default=0) + bs - 1) // bs
        key_pos = torch.arange(n_blocks * bs, device=device)
        dec_mask = key_pos[None, :] < md.context_lens[rows][:, None]  # [Bd, nb_max * BS]
        return AttentionPlan(
            md.query_start_loc[rows],
            md.block_tables[rows, :n_blocks],
            dec_mask[:, None, None, :],
            prefills,
            max([len(decode_rows) * n_blocks] + [p.blocks.numel() for p in prefills]),
        )


def write_kv_cache(kv_cache: Tensor, slot_mapping: Tensor, k: Tensor, v: Tensor) -> None:
    """Stores this step's k, v [T, KV, hd] into kv_cache [2, NB, BS, KV, hd] at slot_mapping."""
    _, nb, bs, kv_heads, hd = kv_cache.shape
    kv_cache[0].view(nb * bs, kv_heads, hd).index_copy_(0, slot_mapping, k.to(kv_cache.dtype))
    kv_cache[1].view(nb * bs, kv_heads, hd).index_copy_(0, slot_mapping, v.to(kv_cache.dtype))


def _gather_blocks(cache: Tensor, blocks: Tensor, out: Tensor, dtype: torch.dtype) -> Tensor:
    """cache [NB, BS, KV, hd], blocks [..., nb] -> [..., KV, nb * BS, hd] (a transposed view
    of `out`, a reused workspace: a fresh multi-MB buffer per layer costs more in page faults
    than the copy itself)."""
    _, bs, kv_heads, hd = cache.shape
    flat = blocks.reshape(-1)
    gathered = torch.index_select(cache, 0, flat, out=out[: flat.numel()]).to(dtype)
    return gathered.view(*blocks.shape[:-1], blocks.shape[-1] * bs, kv_heads, hd).transpose(-3, -2)


def paged_attention(
    q: Tensor, kv_cache: Tensor, plan: AttentionPlan, scale: float | None = None
) -> Tensor:
    """q [T, H, hd] (K/V already written to the cache) -> out [T, H, hd]; scale 1/sqrt(hd).

    Decodes: the G query heads sharing a kv head are folded into the query-row axis, so SDPA
    sees [Bd, KV, G, hd] against [Bd, KV, C, hd] without copying K/V per head. Prefill chunks:
    [1, H, q_len, hd] against [1, KV, C, hd] with SDPA's grouped-query mode.
    """
    num_tokens, num_heads, hd = q.shape
    kv_heads = kv_cache.shape[3]
    out = torch.empty_like(q)
    ws = plan.workspace(kv_cache)

    if plan.decode_tokens.numel():
        bd = plan.decode_tokens.numel()
        qd = q[plan.decode_tokens].view(bd, kv_heads, num_heads // kv_heads, hd)
        kd = _gather_blocks(kv_cache[0], plan.decode_blocks, ws[0], q.dtype)  # [Bd, KV, C, hd]
        vd = _gather_blocks(kv_cache[1], plan.decode_blocks, ws[1], q.dtype)
        od = F.scaled_dot_product_attention(qd, kd, vd, attn_mask=plan.decode_mask, scale=scale)
        out[plan.decode_tokens] = od.reshape(bd, num_heads, hd)

    for p in plan.prefills:
        rows = slice(p.token_start, p.token_start + p.q_len)
        qp = q[rows].transpose(0, 1)[None]  # [1, H, q_len, hd]
        kp = _gather_blocks(kv_cache[0], p.blocks[None], ws[0], q.dtype)  # [1, KV, C, hd]
        vp = _gather_blocks(kv_cache[1], p.blocks[None], ws[1], q.dtype)
        op = F.scaled_dot_product_attention(
            qp, kp, vp, attn_mask=p.mask, scale=scale, enable_gqa=True
        )
        out[rows] = op[0].transpose(0, 1)
    return out
