"""GQA attention over the paged KV cache (the torch path) and the metadata that drives it.

Shapes: T tokens in the step, B sequences, H query heads, KV kv heads, G = H // KV,
hd head_dim, NB cache blocks of BS tokens, C context length (tokens in cache).
KV cache of one layer: [2, NB, BS, KV, hd]; slot s = block * BS + offset.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from lamina_engine.kernels.cpu_ops import can_run, native_ops


def upload(host: Tensor, device: torch.device | str) -> Tensor:
    """A step input made on the host -> `device`. On CUDA through pinned memory with one
    non-blocking copy: the host does not wait (a plain copy from pageable memory synchronises
    with every kernel already queued), and the copy is ordered before the kernels that read it
    on the same stream. On the CPU the tensor itself."""
    if torch.device(device).type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)


def upload_ints(values: list, device: torch.device | str) -> Tensor:
    """Python ints -> an int64 tensor on `device` (see `upload`)."""
    return upload(torch.tensor(values, dtype=torch.int64), device)


@dataclass
class AttentionMetadata:  # T tokens in the step, B sequences
    slot_mapping: Tensor  # [T] int64, cache slot each token's K/V is written to
    query_start_loc: Tensor  # [B+1] int64, cumulative query lengths (tokens grouped by seq)
    context_lens: Tensor  # [B] int64, tokens in cache for each seq after this step
    block_tables: Tensor  # [B, max_blocks] int64 (padded with 0)
    block_size: int
    plan: AttentionPlan  # the torch path's gather indices and masks, shared by every layer

    @staticmethod
    def build(
        seq_starts: Sequence[int],
        seq_query_lens: Sequence[int],
        block_tables: Sequence[Sequence[int]],
        block_size: int,
        device: torch.device | str = "cpu",
    ) -> AttentionMetadata:
        """From per-sequence ints: sequence b computes positions
        [seq_starts[b], seq_starts[b] + seq_query_lens[b]) and owns blocks block_tables[b].
        The plan is derived here, from the same ints, not read back from the tensors."""
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
        context_lens = [s + q for s, q in zip(seq_starts, seq_query_lens, strict=True)]

        def as_tensor(values: list) -> Tensor:
            return upload_ints(values, device)

        tables = as_tensor(padded).reshape(len(block_tables), max_blocks)
        return AttentionMetadata(
            slot_mapping=as_tensor(slots),
            query_start_loc=as_tensor(cum),
            context_lens=as_tensor(context_lens),
            block_tables=tables,
            block_size=block_size,
            plan=AttentionPlan.build(cum, context_lens, block_tables, tables, block_size),
        )


@dataclass
class _Prefill:  # one sequence with several query tokens
    token_start: int
    q_len: int
    blocks: Tensor  # [nb] cache blocks holding the sequence's context, in position order
    mask: Tensor  # [q_len, nb * BS] bool, True where the query may attend


@dataclass
class _Decode:  # one sequence with a single query token (its row: AttentionPlan.decode_tokens)
    context: int  # keys it sees: the first `context` slots of its blocks
    block_start: int  # its first block's index in AttentionPlan.decode_blocks
    blocks: Tensor | None = None  # [nb] its cache blocks (a view of decode_blocks)


@dataclass
class AttentionPlan:
    """Gather indices and masks for the torch path, made once per step by
    AttentionMetadata.build from its python ints (never read back from the tensors) and
    shared by every layer that uses the metadata (they read the same block tables).

    K/V are gathered a whole block at a time (one index_select of contiguous [BS, KV, hd]
    chunks: ~10x faster on CPU than gathering per slot), unpadded (padding every sequence to
    the longest context read ~2x the bytes on a mixed batch). Each decode gathers its own
    blocks into the head of the workspace (still in cache when the bmm reads it; gathering all
    decodes at once and then attending wrote and re-read every key through memory) and runs
    two small bmm calls, no mask; each multi-token sequence (a prefill chunk) runs as its own
    masked SDPA call.
    """

    decodes: list[_Decode]
    decode_tokens: Tensor  # [Bd] int64, each decode's query row in the step's T tokens
    decode_blocks: Tensor  # [sum of decodes' blocks] cache block ids, sequence after sequence
    prefills: list[_Prefill]
    max_gather_blocks: int = 0  # blocks one gather reads at most (workspace size)
    decode_block_starts: list[int] = field(default_factory=list)  # the CPU kernel's (ints)
    decode_contexts: list[int] = field(default_factory=list)
    # The Triton path's inputs (kernels/paged_attention.py), made here once per step:
    decode_tables: Tensor | None = None  # [Bd, max_blocks] the decodes' block tables
    decode_context_lens: Tensor | None = None  # [Bd]
    max_decode_context: int = 0
    prefill_starts: Tensor | None = None  # [Bp] each chunk's first row in the step
    prefill_q_lens: Tensor | None = None  # [Bp]
    prefill_contexts: Tensor | None = None  # [Bp] keys after this step (its chunk included)
    prefill_tables: Tensor | None = None  # [Bp, max_blocks]
    max_prefill_q_len: int = 0
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
    def build(
        query_start: list[int],
        context_lens: list[int],
        block_tables: Sequence[Sequence[int]],
        tables: Tensor,
        block_size: int,
    ) -> AttentionPlan:
        """From the ints AttentionMetadata.build has: query_start [B+1] (cumulative query
        lengths), context_lens [B], the block tables, and `tables` [B, max_blocks], their padded
        tensor on the step's device."""
        device = tables.device
        bs = block_size
        decodes, decode_tokens, decode_block_ids, prefills = [], [], [], []
        decode_seqs, prefill_seqs = [], []
        for b, ctx in enumerate(context_lens):
            q_len = query_start[b + 1] - query_start[b]
            n_blocks = (ctx + bs - 1) // bs
            if q_len == 1:
                decodes.append(_Decode(ctx, len(decode_block_ids)))
                decode_tokens.append(query_start[b])
                decode_block_ids += block_tables[b][:n_blocks]
                decode_seqs.append(b)
                continue
            prefill_seqs.append(b)
            # query i sits at position ctx - q_len + i and sees keys at positions <= it
            q_pos = torch.arange(ctx - q_len, ctx, device=device)
            mask = torch.arange(n_blocks * bs, device=device)[None, :] <= q_pos[:, None]
            prefills.append(_Prefill(query_start[b], q_len, tables[b, :n_blocks], mask))

        def ints(values: list[int]) -> Tensor:
            return upload_ints(values, device)

        all_decode_blocks = ints(decode_block_ids)
        for d in decodes:
            d.blocks = all_decode_blocks[d.block_start : d.block_start + -(-d.context // bs)]
        return AttentionPlan(
            decodes,
            ints(decode_tokens),
            all_decode_blocks,
            prefills,
            max([len(decode_block_ids)] + [p.blocks.numel() for p in prefills]),
            [d.block_start for d in decodes],
            [d.context for d in decodes],
            tables.index_select(0, ints(decode_seqs)),
            ints([d.context for d in decodes]),
            max((d.context for d in decodes), default=0),
            ints([p.token_start for p in prefills]),
            ints([p.q_len for p in prefills]),
            ints([context_lens[b] for b in prefill_seqs]),
            tables.index_select(0, ints(prefill_seqs)),
            max((p.q_len for p in prefills), default=0),
        )


def write_kv_cache(
    kv_cache: Tensor, slot_mapping: Tensor, k: Tensor, v: Tensor, kernels: str = "torch"
) -> None:
    """Stores this step's k, v [T, KV, hd] into kv_cache [2, NB, BS, KV, hd] at slot_mapping
    (kernels="triton": kernels/kv_store.py)."""
    if kernels == "triton":
        from lamina_engine.kernels.kv_store import store_kv

        return store_kv(kv_cache, slot_mapping, k, v)
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


def _native_decode(q: Tensor, kv_cache: Tensor):
    """The CPU kernels (kernels/cpu_ops.py) when they take these operands, else None."""
    if q.dtype != torch.float32 or not can_run(kv_cache):
        return None
    return native_ops()


def paged_attention(
    q: Tensor,
    kv_cache: Tensor,
    plan: AttentionPlan,
    scale: float | None = None,
    kernels: str = "torch",
) -> Tensor:
    """q [T, H, hd] (K/V already written to the cache) -> out [T, H, hd]; scale 1/sqrt(hd).

    Decodes: the G query heads sharing a kv head are the rows of one [KV, G, hd] @ [KV, hd, C]
    bmm, so K/V are never copied per head; softmax in fp32 (SDPA's blocked online softmax here
    was faster still but rounds differently, and flipped a router near-tie that the bmm path
    and HF break the same way). Prefill chunks: [1, H, q_len, hd] against [1, KV, C, hd] with
    SDPA's grouped-query mode. kernels="triton": both through kernels/paged_attention.py,
    reading the cache in place.
    """
    if kernels == "triton":
        from lamina_engine.kernels.paged_attention import triton_paged_attention

        return triton_paged_attention(q, kv_cache, plan, scale)
    num_tokens, num_heads, hd = q.shape
    kv_heads = kv_cache.shape[3]
    group = num_heads // kv_heads
    scale = hd**-0.5 if scale is None else scale
    out = torch.empty_like(q)

    if plan.decodes and (ops := _native_decode(q, kv_cache)) is not None:
        rows = plan.decode_tokens  # every decode in one call, K/V read in place
        starts, contexts = plan.decode_block_starts, plan.decode_contexts
        attended = ops.decode_attention(
            q.index_select(0, rows), kv_cache, plan.decode_blocks, starts, contexts, scale
        )
        out.index_copy_(0, rows, attended)
    elif plan.decodes:
        rows = plan.decode_tokens
        queries = q.index_select(0, rows).float().mul_(scale).view(-1, kv_heads, group, hd)
        outs, ws = [], plan.workspace(kv_cache)
        for i, d in enumerate(plan.decodes):
            nb = d.blocks.numel()
            # [nb, BS, KV, hd] -> [KV, C, hd] views; the workspace's head stays in cache
            k = torch.index_select(kv_cache[0], 0, d.blocks, out=ws[0, :nb])
            v = torch.index_select(kv_cache[1], 0, d.blocks, out=ws[1, :nb])
            k = k.flatten(0, 1)[: d.context].transpose(0, 1).float()
            v = v.flatten(0, 1)[: d.context].transpose(0, 1).float()
            weights = torch.softmax(torch.bmm(queries[i], k.transpose(1, 2)), dim=-1)
            outs.append(torch.bmm(weights, v))  # [KV, G, C] @ [KV, C, hd]
        out.index_copy_(0, rows, torch.stack(outs).view(-1, num_heads, hd).to(q.dtype))

    for p in plan.prefills:
        ws = plan.workspace(kv_cache)  # made once per step, shared by every layer
        rows = slice(p.token_start, p.token_start + p.q_len)
        qp = q[rows].transpose(0, 1)[None]  # [1, H, q_len, hd]
        kp = _gather_blocks(kv_cache[0], p.blocks[None], ws[0], q.dtype)  # [1, KV, C, hd]
        vp = _gather_blocks(kv_cache[1], p.blocks[None], ws[1], q.dtype)
        op = F.scaled_dot_product_attention(
            qp, kp, vp, attn_mask=p.mask, scale=scale, enable_gqa=True
        )
        out[rows] = op[0].transpose(0, 1)
    return out
