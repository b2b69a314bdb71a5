"""Layered prefill (arXiv 2510.08055): the layer group, not the token chunk, is the unit of
prefill work. No torch here.

One prefill *cohort* is in flight at a time. When none is, a new one is formed: first the
partial prompts (running sequences whose prompt did not fit the previous cohort), then waiting
requests FCFS, up to `layered_budget` B tokens in total and `max_num_seqs` running; a new
request joins only if blocks for ALL its tokens can be allocated now. G, the number of layer
groups, follows the cohort's total tokens T (u = `layered_group_tokens`, 512 by default):

    T <= u -> 1,  <= 2u -> 2,  <= 4u -> 4,  <= 8u -> 8,  else Gmax     (all capped at Gmax and L)

and the L layers are split into G contiguous groups the way `numpy.array_split` splits
`range(L)`. Every step, each running decode runs all layers while the cohort runs group g only,
in the same forward (one MoE call per layer serves both). After group G-1 the cohort's tokens
are computed: prompts that are complete sample their first token and decode from the next
step on; a prompt cut by B continues first in the next cohort.

Decodes that run out of KV slots preempt from the tail of the decoding sequences; cohort
members are never preempted mid-flight (their KV is half-written across layers), nor are
partial prompts waiting for the next cohort.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from ..sequence import SequenceStatus
from .output import CohortStep, ScheduledChunk, SchedulerOutput, StepBuilder
from .policies import SchedulerState, SchedulingPolicy, is_decoding, schedule_decodes

# Cohort sizes (in units of layered_group_tokens) up to which G = 1, 2, 4, 8 groups.
_BUCKETS = ((1, 1), (2, 2), (4, 4), (8, 8))


def choose_num_groups(
    total_tokens: int, group_tokens: int, max_groups: int, num_layers: int
) -> int:
    """G for a cohort of `total_tokens`: about `group_tokens` of prefill work per step."""
    cap = min(max_groups, num_layers)
    for units, groups in _BUCKETS:
        if total_tokens <= units * group_tokens:
            return min(groups, cap)
    return cap


def split_layers(num_layers: int, num_groups: int) -> list[tuple[int, int]]:
    """`numpy.array_split(range(num_layers), G)` as [start, end) ranges, G = min(num_groups,
    num_layers) so no group is empty: the first num_layers % G groups get one layer more.

    The layered policy's cohort groups and a prefill pod's KV shipping groups both use it."""
    if num_layers < 1 or num_groups < 1:
        raise ValueError(f"cannot split {num_layers} layers into {num_groups} groups (need >= 1)")
    num_groups = min(num_groups, num_layers)
    size, extra = divmod(num_layers, num_groups)
    ranges, start = [], 0
    for g in range(num_groups):
        end = start + size + (1 if g < extra else 0)
        ranges.append((start, end))
        start = end
    return ranges


@dataclass
class Cohort:
    """The prefill cohort in flight: chunks fixed at admission, one layer group per step."""

    cohort_id: int
    chunks: list[ScheduledChunk]
    groups: list[tuple[int, int]]  # [l0, l1) per group
    next_group: int = 0

    @property
    def member_ids(self) -> frozenset[int]:
        return frozenset(c.seq.seq_id for c in self.chunks)

    @property
    def num_tokens(self) -> int:
        return sum(c.num_tokens for c in self.chunks)


class LayeredPolicy(SchedulingPolicy):
    name = "layered"

    def __init__(self) -> None:
        self.cohort: Cohort | None = None
        self._ids = itertools.count()

    def schedule(self, state: SchedulerState) -> SchedulerOutput:
        cfg = state.config
        if self.cohort is not None:
            # members aborted since the last step are dropped; an emptied cohort ends
            live = [c for c in self.cohort.chunks if c.seq.status is SequenceStatus.RUNNING]
            self.cohort.chunks = live
            if not live:
                self.cohort = None
        # Preemption victims are decoding sequences only: neither cohort members (KV half
        # written across layers) nor partial prompts (the next cohort's first members).
        spare = frozenset(s.seq_id for s in state.running if not is_decoding(s))
        if self.cohort is not None:
            spare |= self.cohort.member_ids
        # Every decode runs each step; running <= max_num_seqs bounds their tokens.
        step = StepBuilder(cfg.max_num_seqs)
        schedule_decodes(state, step, spare)
        if self.cohort is None:
            self.cohort = self._admit(state, step)
        cohort = self.cohort
        if cohort is None:
            return step.build()
        g = cohort.next_group
        l0, l1 = cohort.groups[g]
        out = CohortStep(cohort.cohort_id, list(cohort.chunks), g, len(cohort.groups), l0, l1)
        cohort.next_group += 1
        if out.is_last:
            self.cohort = None  # postprocess makes its tokens computed; the next step may admit
        return step.build(out)

    def _admit(self, state: SchedulerState, step: StepBuilder) -> Cohort | None:
        cfg = state.config
        budget = cfg.layered_budget
        chunks: list[ScheduledChunk] = []
        total = 0
        # Partial prompts first: they already own all their blocks.
        for seq in state.running:
            if total >= budget:
                break
            if seq not in step and not is_decoding(seq):
                n = min(seq.num_uncomputed_tokens, budget - total)
                chunks.append(ScheduledChunk(seq, seq.num_computed_tokens, n))
                total += n
        # A step that had to preempt admits nobody new: it would only preempt again.
        while (
            not step.preempted
            and state.waiting
            and total < budget
            and state.has_seat()
            and state.blocks.can_allocate(state.waiting[0])
        ):
            seq = state.waiting.popleft()
            state.blocks.allocate(seq)  # all its tokens' blocks, minus prefix-cache hits
            seq.status = SequenceStatus.RUNNING
            state.running.append(seq)
            n = min(seq.num_uncomputed_tokens, budget - total)
            chunks.append(ScheduledChunk(seq, seq.num_computed_tokens, n))
            total += n
        if not chunks:
            return None
        num_layers = cfg.num_layers
        if num_layers is None:
            raise ValueError("the layered policy needs SchedulerConfig.num_layers")
        g = choose_num_groups(total, cfg.layered_group_tokens, cfg.layered_max_groups, num_layers)
        return Cohort(next(self._ids), chunks, split_layers(num_layers, g))
