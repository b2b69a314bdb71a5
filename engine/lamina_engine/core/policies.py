"""Scheduling policies: which tokens of which sequences run in the next step. No torch.

A policy reads and updates a `SchedulerState` (queues + block manager) and returns a
`SchedulerOutput`. The pieces every policy needs (collect decodes, continue partial prefills,
admit FCFS, preempt from the tail) are module functions over a `StepBuilder`, so the layered
and SPEED policies reuse them instead of copying them.

Preemption is by recompute: the victim's blocks are freed, `num_computed_tokens` goes back to 0
and it waits at the front of the queue; it keeps its output tokens and recomputes prompt +
outputs when readmitted (often partly from the prefix cache).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from ..sequence import Sequence, SequenceStatus
from .block_manager import BlockManager
from .output import SchedulerOutput, StepBuilder
from .scheduler_config import SchedulerConfig


@dataclass
class SchedulerState:
    config: SchedulerConfig
    blocks: BlockManager
    waiting: deque[Sequence] = field(default_factory=deque)  # FCFS; preempted go to the front
    running: list[Sequence] = field(default_factory=list)  # admission order; the tail is newest
    # disaggregated decode: sequences holding blocks while their prompt KV loads (no step
    # touches them); they take a running seat already, so activating one never overfills
    reserved: dict[int, Sequence] = field(default_factory=dict)
    num_preemptions: int = 0

    def has_seat(self) -> bool:
        """Room for one more sequence under max_num_seqs (reserved ones count)."""
        return len(self.running) + len(self.reserved) < self.config.max_num_seqs


class SchedulingPolicy:
    """Base class: subclasses implement `schedule`; scheduler.POLICIES maps each `name` (one of
    scheduler_config.POLICY_NAMES) to its class."""

    name = ""

    def schedule(self, state: SchedulerState) -> SchedulerOutput:
        raise NotImplementedError


# ---- shared pieces -------------------------------------------------------------------------


def is_decoding(seq: Sequence) -> bool:
    """One token left to compute: running it samples the next token."""
    return seq.num_uncomputed_tokens == 1


def preempt_tail(
    state: SchedulerState, step: StepBuilder, spare: frozenset[int] = frozenset()
) -> Sequence:
    """Evict the most recently admitted running sequence whose id is not in `spare`; it will be
    recomputed. (The layered policy spares the members of its cohort in flight.)"""
    i = len(state.running) - 1
    while state.running[i].seq_id in spare:
        i -= 1
        if i < 0:
            raise RuntimeError("every running sequence is spared: nothing can be preempted")
    victim = state.running.pop(i)
    step.drop(victim)
    state.blocks.free(victim)
    victim.num_computed_tokens = 0
    victim.num_cached_tokens = 0
    victim.status = SequenceStatus.WAITING
    state.waiting.appendleft(victim)
    state.num_preemptions += 1
    step.preempted.append(victim)
    return victim


def reserve_slots(
    state: SchedulerState,
    step: StepBuilder,
    seq: Sequence,
    num_tokens: int,
    spare: frozenset[int] = frozenset(),
) -> bool:
    """Make KV slots for `num_tokens` more tokens of running `seq`, preempting from the tail
    (never a sequence in `spare`) while blocks are short. False when `seq` itself had to go."""
    while not state.blocks.can_append(seq, num_tokens):
        if preempt_tail(state, step, spare) is seq:
            return False
    state.blocks.append_slots(seq, num_tokens)
    return True


def schedule_decodes(
    state: SchedulerState, step: StepBuilder, spare: frozenset[int] = frozenset()
) -> None:
    """One token for every running sequence that is decoding, in admission order. Sequences in
    `spare` are neither scheduled nor preempted."""
    i = 0
    while i < len(state.running) and step.budget_left > 0:
        seq = state.running[i]
        if is_decoding(seq) and seq not in step and seq.seq_id not in spare:
            if not reserve_slots(state, step, seq, 1, spare):
                break  # seq was the last candidate: nothing after it is left to schedule
            step.add(seq, 1)
        i += 1


def schedule_partial_prefills(state: SchedulerState, step: StepBuilder) -> None:
    """Continue running sequences with more than one token left: min(left, budget) each."""
    i = 0
    while i < len(state.running) and step.budget_left > 0:
        seq = state.running[i]
        if not is_decoding(seq) and seq not in step:
            n = min(seq.num_uncomputed_tokens, step.budget_left)
            if not reserve_slots(state, step, seq, n):
                break
            step.add(seq, n)
        i += 1


def admit_waiting(state: SchedulerState, step: StepBuilder) -> list[Sequence]:
    """Admit waiting sequences FCFS while all their KV fits, the running set has room and the
    budget lasts; each gets a first chunk of min(left after prefix hits, budget). Stops at the
    first that does not fit (no overtaking, so long prompts are not starved)."""
    admitted: list[Sequence] = []
    while (
        state.waiting
        and step.budget_left > 0
        and state.has_seat()
        and state.blocks.can_allocate(state.waiting[0])
    ):
        seq = state.waiting.popleft()
        state.blocks.allocate(seq)
        seq.status = SequenceStatus.RUNNING
        state.running.append(seq)
        step.add(seq, min(seq.num_uncomputed_tokens, step.budget_left))
        admitted.append(seq)
    return admitted


# ---- policies ------------------------------------------------------------------------------


class ChunkedPolicy(SchedulingPolicy):
    """Sarathi-Serve chunked prefill: per step, a token budget tau (max_num_batched_tokens) is
    spent on (a) every running decode, (b) partial prefills, (c) FCFS admissions."""

    name = "chunked"

    def schedule(self, state: SchedulerState) -> SchedulerOutput:
        step = StepBuilder(state.config.max_num_batched_tokens)
        schedule_decodes(state, step)
        schedule_partial_prefills(state, step)
        # Blocks just ran out: admitting now would only preempt again next step.
        if not step.preempted:
            admit_waiting(state, step)
        return step.build()
