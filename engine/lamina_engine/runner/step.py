"""One forward step over the paged KV cache: every SchedulerOutput runs through `run_step`, with
or without a layered-prefill cohort, with or without SPEED.

Shapes: Tm main tokens (chunks that run every layer: decodes and chunked-prefill chunks), Tc
cohort tokens, N sampling rows, D hidden. K is the depth every token runs (SPEED's cutoff, or L
without SPEED); [l0, l1) is the cohort's layer group this step (l0 = l1 = K without a cohort):

    main:    embed -> layers [0, l0)                     (main metadata)
    cohort:  embed (g = 0) or the stash (g > 0)
    both:    concat [Tm + Tc, D] -> layers [l0, l1)      (ONE metadata, one MoE call per layer)
    main:    layers [l1, K)
    cohort:  -> the stash (g < G - 1), or on with main's rows at its last group
    above K: SPEED's full-depth rows -> layers [K, L)    (upper metadata: compact slots in the
             upper tables, absolute RoPE positions); without SPEED (K = L) nothing runs here
    sample:  final norm of each sampling chunk's last token -> [N, D]

Main tokens write their KV in every layer they run; cohort tokens in the group's layers only.
Each full-depth token's input to layer K is its own output of layer K - 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from lamina_engine.core.output import ScheduledChunk, SchedulerOutput
from lamina_engine.core.speed_layout import SpeedLayout
from lamina_engine.models import AttentionMetadata, CausalLM
from lamina_engine.models.attention import upload_ints
from lamina_engine.runner.cohort_stash import CohortStash
from lamina_engine.runner.token_batch import TokenBatch
from lamina_engine.sequence import Sequence


@dataclass
class _RowsAboveK:
    """The rows that go on past layer K - 1, part by part (main, then the cohort's), and which
    of them sample. Without upper layers only the sampling rows go on."""

    layout: SpeedLayout | None
    part_rows: list[list[int]] = field(default_factory=list)  # rows of each part's hidden
    batch: TokenBatch = field(default_factory=TokenBatch)  # upper layers: compact starts
    sample_rows: list[int] = field(default_factory=list)  # indices into the rows, concatenated
    seqs: list[Sequence] = field(default_factory=list)  # the sequence of each sample row
    num_rows: int = 0

    @property
    def has_upper(self) -> bool:
        return self.layout is not None and self.layout.has_upper

    def add(self, chunks: list[ScheduledChunk]) -> None:
        rows: list[int] = []
        offset = 0  # row of each chunk's first token within this part
        for c in chunks:
            if self.has_upper:
                p = c.seq.num_prompt_tokens
                full = self.layout.full_depth_positions(p, c.start, c.start + c.num_tokens)
                if full:
                    rows += [offset + pos - c.start for pos in full]
                    self.batch.positions += full
                    self.batch.starts.append(self.layout.num_upper(p, c.start))
                    self.batch.qlens.append(len(full))
                    self.batch.tables.append(c.seq.upper_block_table)
            elif c.samples:
                rows.append(offset + c.num_tokens - 1)
            if c.samples:  # the last token (position num_tokens - 1) is always full depth
                self.sample_rows.append(self.num_rows + len(rows) - 1)
                self.seqs.append(c.seq)
            offset += c.num_tokens
        self.part_rows.append(rows)
        self.num_rows += len(rows)


@dataclass
class StepInputs:
    """Everything a step reads from the host, made before its first layer runs (`build_inputs`):
    token ids, positions and attention metadata of each layer range, the stashed cohort rows
    to take, the rows that go on past layer K and the sampling rows. Each tensor is made once,
    on CUDA copied with one non-blocking transfer from pinned memory (models.attention.upload),
    so `forward_step` only launches device work: no host sync inside the layer loop."""

    k: int  # depth every token runs (SPEED's cutoff, or L)
    l0: int  # the cohort's layer group [l0, l1) (l0 = l1 = k without a cohort)
    l1: int
    num_main: int
    main_ids: Tensor | None = None  # [Tm]
    main_pos: Tensor | None = None  # [Tm]
    main_md: AttentionMetadata | None = None
    cohort_ids: Tensor | None = None  # [Tc], first group only (later groups read the stash)
    stash_index: Tensor | None = None  # stashed rows of the members still there, or None: all
    both_pos: Tensor | None = None  # [Tm + Tc], the group's layers
    both_md: AttentionMetadata | None = None
    above: _RowsAboveK | None = None
    part_index: list[Tensor | None] = field(default_factory=list)  # rows of each part going on
    upper_pos: Tensor | None = None  # layers [K, L), SPEED only
    upper_md: AttentionMetadata | None = None
    sample_index: Tensor | None = None  # sampling rows among those, None when all of them


def build_inputs(
    out: SchedulerOutput,
    stash: CohortStash,
    block_size: int,
    device: torch.device,
    num_layers: int,
    layout: SpeedLayout | None = None,
) -> StepInputs:
    """The host half of a step: python ints from the scheduled chunks -> the step's tensors."""
    k = num_layers if layout is None else layout.prefill_layers
    cohort = out.cohort
    l0, l1 = (cohort.layer_start, cohort.layer_end) if cohort is not None else (k, k)
    if l1 > k:
        raise RuntimeError(f"a cohort group [{l0}, {l1}) reaches above the SPEED cutoff K={k}")
    main = TokenBatch.of(out.chunks)
    inp = StepInputs(k, l0, l1, main.num_tokens)
    if inp.num_main:
        inp.main_ids = main.input_ids(device)
        inp.main_pos = main.position_ids(device)
        inp.main_md = main.metadata(block_size, device)
    if cohort is not None:
        coh = TokenBatch.of(cohort.chunks)
        if cohort.is_first:
            inp.cohort_ids = coh.input_ids(device)
        else:
            rows = stash.rows(cohort.cohort_id, cohort.chunks)
            inp.stash_index = None if rows is None else upload_ints(rows, device)
        both = main + coh
        inp.both_pos = both.position_ids(device)
        inp.both_md = both.metadata(block_size, device)
    # The rows that go on: main's, then the cohort's once its last group has run.
    above = _RowsAboveK(layout)
    if inp.num_main:
        above.add(out.chunks)
    if cohort is not None and cohort.is_last:
        above.add(cohort.chunks)
    if not above.sample_rows and not above.has_upper or above.num_rows == 0:
        return inp  # nothing samples and no upper layer has KV to write
    inp.above = above
    inp.part_index = [upload_ints(rows, device) if rows else None for rows in above.part_rows]
    if above.has_upper:
        inp.upper_md = above.batch.metadata(block_size, device)
        inp.upper_pos = above.batch.position_ids(device)
    if above.sample_rows and len(above.sample_rows) < above.num_rows:
        inp.sample_index = upload_ints(above.sample_rows, device)
    return inp


def forward_step(
    model: CausalLM,
    kv_caches: list[Tensor],
    out: SchedulerOutput,
    stash: CohortStash,
    inp: StepInputs,
) -> tuple[Tensor | None, list[Sequence]]:
    """The device half of a step: embed -> layers -> the sampling rows' final norm, from
    `inp` only (launches device work; reads nothing back from the device, makes no tensor
    from host data)."""
    num_layers = model.num_layers
    k, l0, l1, nm = inp.k, inp.l0, inp.l1, inp.num_main
    cohort = out.cohort
    h: Tensor | None = None
    r: Tensor | None = None
    if nm:
        h = model.embed(inp.main_ids)
        if l0 > 0:
            h, r = model.forward_layers(0, l0, inp.main_pos, h, None, inp.main_md, kv_caches)

    if cohort is None:
        stash.clear()  # a cohort whose members were all aborted never comes back
    else:
        if cohort.is_first:
            h_c, r_c = model.embed(inp.cohort_ids), None
        else:
            h_c, r_c = stash.take(cohort.cohort_id, cohort.chunks, inp.stash_index)
        hidden = h_c if h is None else torch.cat([h, h_c])
        residual = r_c if r is None else torch.cat([r, r_c])  # both None at layer 0
        hidden, residual = model.forward_layers(
            l0, l1, inp.both_pos, hidden, residual, inp.both_md, kv_caches
        )
        if nm:
            h, r = hidden[:nm], residual[:nm]
        h_c, r_c = hidden[nm:], residual[nm:]
        if cohort.is_last:
            stash.clear()
        else:
            stash.put(cohort.cohort_id, cohort.chunks, h_c, r_c)

    if nm and l1 < k:
        h, r = model.forward_layers(l1, k, inp.main_pos, h, r, inp.main_md, kv_caches)

    above = inp.above
    if above is None:
        return None, []
    parts_h: list[Tensor] = []
    parts_r: list[Tensor] = []
    if nm:
        parts_h.append(h)
        parts_r.append(r)
    if cohort is not None and cohort.is_last:
        parts_h.append(h_c)
        parts_r.append(r_c)
    hu = _take(parts_h, above.part_rows, inp.part_index)
    ru = _take(parts_r, above.part_rows, inp.part_index)
    if above.has_upper:
        hu, ru = model.forward_layers(k, num_layers, inp.upper_pos, hu, ru, inp.upper_md, kv_caches)
    if not above.sample_rows:
        return None, []
    if inp.sample_index is not None:
        hu, ru = hu.index_select(0, inp.sample_index), ru.index_select(0, inp.sample_index)
    return model.final_norm(hu, ru), above.seqs


def _take(parts: list[Tensor], part_rows: list[list[int]], index: list[Tensor | None]) -> Tensor:
    """The given rows of each part (`index`: part_rows on the device), concatenated in order:
    [sum of rows, D]."""
    taken = [
        t.index_select(0, i) for t, rows, i in zip(parts, part_rows, index, strict=True) if rows
    ]
    return taken[0] if len(taken) == 1 else torch.cat(taken)


def run_step(
    model: CausalLM,
    kv_caches: list[Tensor],
    out: SchedulerOutput,
    stash: CohortStash,
    block_size: int,
    device: torch.device,
    layout: SpeedLayout | None = None,
) -> tuple[Tensor | None, list[Sequence]]:
    """Runs one step; returns (normed hidden [N, D] of the N sampling rows, or None, and the N
    sequences they sample for): main chunks first, then, at the cohort's last group, the
    cohort's chunks whose prompt is complete. The step's inputs are all built (and on CUDA
    sent) before its first layer is launched."""
    inp = build_inputs(out, stash, block_size, device, model.num_layers, layout)
    return forward_step(model, kv_caches, out, stash, inp)
