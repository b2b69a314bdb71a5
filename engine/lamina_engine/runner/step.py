"""Executing a SPEED step: every token through the lower layers, full-depth tokens above K.

Shapes: Tm main-chunk tokens (decodes and chunked-prefill chunks), Tc cohort tokens, F
full-depth tokens among those that reach layer K this step, D hidden. With cutoff K of L:

    main:    embed -> lower [0, l0)                       (lower metadata: positions, lower tables)
    cohort:  embed (g = 0) or the stash (g > 0)           (layered policy only; its groups split [0, K))
    both:    concat -> lower [l0, l1) under ONE metadata  (one MoE call per layer for both)
    main:    lower [l1, K)
    upper:   the F full-depth rows of main (+ cohort at its last group) -> [K, L) -> final norm
             (upper metadata: compact slots in the upper tables, absolute RoPE positions)

Without a cohort, l0 = l1 = K. With K = L there are no upper layers and this is exactly the
plain (or layered) step. Each full-depth token's input to layer K is its own output of K - 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from lamina_engine.core.block_manager import BlockManager
from lamina_engine.core.output import ScheduledChunk, SchedulerOutput
from lamina_engine.core.speed_block_manager import SpeedBlockManager
from lamina_engine.core.speed_layout import SpeedLayout
from lamina_engine.models import CausalLM
from lamina_engine.models.config import ModelConfig
from lamina_engine.runner.layered import CohortStash, TokenBatch
from lamina_engine.sequence import Sequence


def allocate_speed_kv_caches(
    config: ModelConfig,
    layout: SpeedLayout,
    num_blocks: int,
    block_size: int,
    dtype: torch.dtype,
    device: torch.device | str,
) -> list[Tensor]:
    """Per layer [2, NB, BS, KV, hd]: NB = num_blocks below K, the upper pool's count above."""
    upper = layout.num_upper_blocks(num_blocks)
    caches = []
    for layer in range(config.num_layers):
        nb = num_blocks if layer < layout.prefill_layers else upper
        shape = (2, nb, block_size, config.num_kv_heads, config.head_dim)
        caches.append(torch.zeros(shape, dtype=dtype, device=device))
    return caches


def kv_bytes_held(blocks: BlockManager, kv_caches: list[Tensor]) -> int:
    """KV bytes in blocks owned by sequences, over every layer's pool (lower and upper)."""
    speed = isinstance(blocks, SpeedBlockManager) and blocks.upper is not None
    total = 0
    for layer, cache in enumerate(kv_caches):
        per_block = cache[:, 0].numel() * cache.element_size()  # K and V of one block
        upper = speed and layer >= blocks.layout.prefill_layers
        total += (blocks.upper if upper else blocks).num_used_blocks * per_block
    return total


@dataclass
class _Upper:
    """Full-depth rows gathered for the upper layers, and which of them sample."""

    rows: list[int] = field(default_factory=list)  # rows of the concatenated lower output
    batch: TokenBatch = field(default_factory=TokenBatch)  # compact starts, absolute positions
    sample_rows: list[int] = field(default_factory=list)  # indices into `rows`
    seqs: list[Sequence] = field(default_factory=list)  # the sequence of each sample row

    def add(self, chunks: list[ScheduledChunk], layout: SpeedLayout, offset: int) -> None:
        for c in chunks:
            p = c.seq.num_prompt_tokens
            full = layout.full_depth_positions(p, c.start, c.start + c.num_tokens)
            if full:
                self.rows += [offset + pos - c.start for pos in full]
                self.batch.positions += full
                self.batch.starts.append(layout.num_upper(p, c.start))
                self.batch.qlens.append(len(full))
                self.batch.tables.append(c.seq.upper_block_table)
                if c.samples:  # the last token (position num_tokens - 1) is full depth
                    self.sample_rows.append(len(self.rows) - 1)
                    self.seqs.append(c.seq)
            offset += c.num_tokens


def run_speed_step(
    model: CausalLM,
    kv_caches: list[Tensor],
    out: SchedulerOutput,
    stash: CohortStash,
    layout: SpeedLayout,
    block_size: int,
    device: torch.device,
) -> tuple[Tensor | None, list[Sequence]]:
    """One step under SPEED; returns (normed hidden [N, D] of the N sampling tokens, or None,
    and their sequences): main chunks first, then cohort chunks at the cohort's last group."""
    k, num_layers = layout.prefill_layers, model.num_layers
    cohort = out.cohort
    l0, l1 = (cohort.layer_start, cohort.layer_end) if cohort is not None else (k, k)
    if l1 > k:
        raise RuntimeError(f"a cohort group [{l0}, {l1}) reaches above the SPEED cutoff K={k}")
    main = TokenBatch.of(out.chunks)
    nm = len(main.ids)
    main_md = main.metadata(block_size, device) if nm else None
    main_pos = main.tensors(device)[1]

    h: Tensor | None = model.embed(main.tensors(device)[0]) if nm else None
    r: Tensor | None = None
    if nm and l0 > 0:
        h, r = model.forward_layers(0, l0, main_pos, h, None, main_md, kv_caches)
    if cohort is not None:
        coh = TokenBatch.of(cohort.chunks)
        if cohort.is_first:
            h_c, r_c = model.embed(coh.tensors(device)[0]), None
        else:
            h_c, r_c = stash.take(cohort.cohort_id, cohort.chunks)
        both = main + coh
        hidden = h_c if h is None else torch.cat([h, h_c])
        residual = r_c if r is None else torch.cat([r, r_c])  # both None at layer 0
        pos = torch.tensor(both.positions, dtype=torch.long, device=device)
        md = both.metadata(block_size, device)
        hidden, residual = model.forward_layers(l0, l1, pos, hidden, residual, md, kv_caches)
        if nm:
            h, r = hidden[:nm], residual[:nm]
        h_c, r_c = hidden[nm:], residual[nm:]
        if cohort.is_last:
            stash.clear()
        else:
            stash.put(cohort.cohort_id, cohort.chunks, h_c, r_c)
    else:
        stash.clear()  # a cohort whose members were all aborted never comes back
    if nm and l1 < k:
        h, r = model.forward_layers(l1, k, main_pos, h, r, main_md, kv_caches)

    # Full-depth rows: main chunks, then the cohort's once its last group has reached K.
    up = _Upper()
    up.add(out.chunks, layout, 0)
    parts_h, parts_r = ([h], [r]) if nm else ([], [])
    if cohort is not None and cohort.is_last:
        up.add(cohort.chunks, layout, nm)
        parts_h.append(h_c)
        parts_r.append(r_c)
    if not up.rows:
        return None, []
    rows = torch.tensor(up.rows, dtype=torch.long, device=device)
    hu = torch.cat(parts_h).index_select(0, rows)
    ru = torch.cat(parts_r).index_select(0, rows)
    if layout.has_upper:
        pos = torch.tensor(up.batch.positions, dtype=torch.long, device=device)
        md = up.batch.metadata(block_size, device)
        hu, ru = model.forward_layers(k, num_layers, pos, hu, ru, md, kv_caches)
    if not up.sample_rows:
        return None, []
    last = torch.tensor(up.sample_rows, dtype=torch.long, device=device)
    return model.final_norm(hu.index_select(0, last), ru.index_select(0, last)), up.seqs
