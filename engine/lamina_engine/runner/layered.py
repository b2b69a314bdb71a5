"""Executing a layered-prefill step: decodes through all layers, the cohort through one group.

Shapes: Td decode tokens, Tc cohort tokens, D hidden. For a step whose cohort runs layers
[l0, l1) of L:

    decodes: embed -> layers [0, l0)                        (decode-only attention metadata)
    cohort:  embed (g = 0) or the stash (g > 0)
    both:    concat [Td + Tc, D] -> layers [l0, l1)        (ONE metadata, one MoE call/layer)
    decodes: split -> layers [l1, L) -> final norm
    cohort:  split -> stash (g < G-1) or final norm of each sampling chunk's last token

Decode tokens write their KV in every layer; cohort tokens in the group's layers only (their
slots are the same every step). The stash keeps (hidden, residual) per cohort member so an
aborted member's rows are simply not taken again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import accumulate

import torch
from torch import Tensor

from lamina_engine.core.output import CohortStep, ScheduledChunk, SchedulerOutput
from lamina_engine.models import AttentionMetadata, CausalLM
from lamina_engine.sequence import Sequence


@dataclass
class TokenBatch:
    """Chunks flattened sequence after sequence: the inputs of one forward."""

    ids: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)
    qlens: list[int] = field(default_factory=list)
    tables: list[list[int]] = field(default_factory=list)

    @staticmethod
    def of(chunks: list[ScheduledChunk]) -> TokenBatch:
        b = TokenBatch()
        for c in chunks:
            end = c.start + c.num_tokens
            b.ids.extend(c.seq.all_token_ids[c.start : end])
            b.positions.extend(range(c.start, end))
            b.starts.append(c.start)
            b.qlens.append(c.num_tokens)
            b.tables.append(c.seq.block_table)
        return b

    def __add__(self, other: TokenBatch) -> TokenBatch:
        return TokenBatch(
            self.ids + other.ids,
            self.positions + other.positions,
            self.starts + other.starts,
            self.qlens + other.qlens,
            self.tables + other.tables,
        )

    def metadata(self, block_size: int, device: torch.device) -> AttentionMetadata:
        return AttentionMetadata.build(self.starts, self.qlens, self.tables, block_size, device)

    def tensors(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """(input ids [T], positions [T]) as int64."""
        as_t = lambda v: torch.tensor(v, dtype=torch.long, device=device)  # noqa: E731
        return as_t(self.ids), as_t(self.positions)


class CohortStash:
    """The cohort's (hidden, residual) between its layer groups, kept on the device.

    Holds one cohort at a time (the scheduler has one in flight): storing a new cohort or
    `clear()` drops the previous one."""

    def __init__(self) -> None:
        self.cohort_id: int | None = None
        self._rows: dict[int, tuple[int, int]] = {}  # seq_id -> [row0, row1) in the tensors
        self._hidden: Tensor | None = None  # [Tc, D]
        self._residual: Tensor | None = None  # [Tc, D]

    def put(self, cohort_id: int, chunks: list[ScheduledChunk], hidden: Tensor, residual: Tensor):
        self.cohort_id, self._hidden, self._residual = cohort_id, hidden, residual
        self._rows, row = {}, 0
        for c in chunks:
            self._rows[c.seq.seq_id] = (row, row + c.num_tokens)
            row += c.num_tokens

    def take(self, cohort_id: int, chunks: list[ScheduledChunk]) -> tuple[Tensor, Tensor]:
        """Rows of `chunks` (a subset of the stored members, in that order)."""
        if cohort_id != self.cohort_id or self._hidden is None or self._residual is None:
            raise RuntimeError(
                f"cohort {cohort_id} has no hidden states stashed (holding {self.cohort_id}); "
                "its earlier layer groups did not run in this runner"
            )
        try:
            spans = [self._rows[c.seq.seq_id] for c in chunks]
        except KeyError as exc:
            raise RuntimeError(f"sequence {exc} is not a member of cohort {cohort_id}") from None
        if len(spans) == len(self._rows):  # nobody dropped out: no copy
            return self._hidden, self._residual
        rows = torch.cat([torch.arange(a, b) for a, b in spans]).to(self._hidden.device)
        return self._hidden.index_select(0, rows), self._residual.index_select(0, rows)

    def clear(self) -> None:
        self.cohort_id, self._rows, self._hidden, self._residual = None, {}, None, None

    def __len__(self) -> int:
        return 0 if self._hidden is None else self._hidden.shape[0]


def run_layered_step(
    model: CausalLM,
    kv_caches: list[Tensor],
    out: SchedulerOutput,
    stash: CohortStash,
    block_size: int,
    device: torch.device,
) -> tuple[Tensor | None, list[Sequence]]:
    """Runs one step with a cohort; returns (normed hidden [N, D] of the N sampling rows, or
    None, and the N sequences they sample for): every decode chunk that samples, then, at the
    last group, every cohort chunk whose prompt is complete."""
    cohort: CohortStep = out.cohort  # type: ignore[assignment]
    l0, l1, num_layers = cohort.layer_start, cohort.layer_end, model.num_layers
    dec, coh = TokenBatch.of(out.chunks), TokenBatch.of(cohort.chunks)
    nd = len(dec.ids)
    dec_ids, dec_pos = dec.tensors(device)
    dec_md = dec.metadata(block_size, device) if nd else None

    # decodes below the group
    h_d: Tensor | None = model.embed(dec_ids) if nd else None
    r_d: Tensor | None = None
    if nd and l0 > 0:
        h_d, r_d = model.forward_layers(0, l0, dec_pos, h_d, None, dec_md, kv_caches)
    # the cohort's input to the group
    if cohort.is_first:
        h_c, r_c = model.embed(coh.tensors(device)[0]), None
    else:
        h_c, r_c = stash.take(cohort.cohort_id, cohort.chunks)
    # the group: decodes first, then the cohort, in one forward over one metadata
    both = dec + coh
    hidden = h_c if h_d is None else torch.cat([h_d, h_c])
    residual = r_c if r_d is None else torch.cat([r_d, r_c])  # both None at g = 0
    pos = torch.tensor(both.positions, dtype=torch.long, device=device)
    md = both.metadata(block_size, device)
    hidden, residual = model.forward_layers(l0, l1, pos, hidden, residual, md, kv_caches)
    h_d, h_c = hidden[:nd], hidden[nd:]
    r_d, r_c = residual[:nd], residual[nd:]
    # decodes above the group
    if nd and l1 < num_layers:
        h_d, r_d = model.forward_layers(l1, num_layers, dec_pos, h_d, r_d, dec_md, kv_caches)

    rows_h: list[Tensor] = []
    seqs: list[Sequence] = []
    sample_d = [i for i, c in enumerate(out.chunks) if c.samples]
    if sample_d:
        ends = list(accumulate(dec.qlens))
        last = torch.tensor([ends[i] - 1 for i in sample_d], device=device)
        rows_h.append(model.final_norm(h_d.index_select(0, last), r_d.index_select(0, last)))
        seqs += [out.chunks[i].seq for i in sample_d]
    if cohort.is_last:
        stash.clear()
        ends = list(accumulate(coh.qlens))
        sample_c = [i for i, c in enumerate(cohort.chunks) if c.samples]
        if sample_c:
            last = torch.tensor([ends[i] - 1 for i in sample_c], device=device)
            rows_h.append(model.final_norm(h_c.index_select(0, last), r_c.index_select(0, last)))
            seqs += [cohort.chunks[i].seq for i in sample_c]
    else:
        stash.put(cohort.cohort_id, cohort.chunks, h_c, r_c)
    return (torch.cat(rows_h) if rows_h else None), seqs
