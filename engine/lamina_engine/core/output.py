"""What one scheduler step hands the model runner (runner/step.py runs it).

Each chunk computes positions `[start, start + num_tokens)` of one sequence; KV for positions
below `start` is already cached. `chunks` run through every layer (running decodes first, then
prefill chunks). Under the layered policy a step may also carry a `CohortStep`: prefill chunks
that run through one contiguous group of layers only, and whose tokens count as computed once
their last group has run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..sequence import Sequence


@dataclass
class ScheduledChunk:
    seq: Sequence
    start: int  # == seq.num_computed_tokens when scheduled
    num_tokens: int  # compute positions [start, start + num_tokens)

    @property
    def samples(self) -> bool:
        """The chunk reaches the sequence's last token, so a new token comes out."""
        return self.start + self.num_tokens == self.seq.num_tokens


@dataclass
class CohortStep:
    """One layer group of the prefill cohort in flight (layered prefill).

    The cohort's chunks (fixed when the cohort was admitted; members aborted since are left
    out) run layers `[layer_start, layer_end)` in this step, in the same forward as the decode
    tokens inside that range. Their hidden states wait in the runner between groups (keyed by
    `cohort_id`). At the last group the chunks that `samples` produce their first token, and
    every chunk's tokens become computed (`num_computed_tokens` advances in postprocess).
    """

    cohort_id: int
    chunks: list[ScheduledChunk]
    group: int  # g in [0, num_groups)
    num_groups: int  # G
    layer_start: int  # l0: first layer of group g
    layer_end: int  # l1: one past the last layer of group g

    @property
    def is_first(self) -> bool:
        return self.group == 0

    @property
    def is_last(self) -> bool:
        return self.group == self.num_groups - 1

    @property
    def num_tokens(self) -> int:
        return sum(c.num_tokens for c in self.chunks)


@dataclass
class SchedulerOutput:
    chunks: list[ScheduledChunk] = field(default_factory=list)  # run through all layers
    preempted: list[Sequence] = field(default_factory=list)  # freed this step; recomputed later
    num_batched_tokens: int = 0  # tokens the step computes (chunks + cohort group)
    cohort: CohortStep | None = None  # layered prefill: the cohort's group this step

    @property
    def is_empty(self) -> bool:
        return not self.chunks and self.cohort is None

    @property
    def computed_chunks(self) -> list[ScheduledChunk]:
        """Chunks whose tokens have KV in every layer once this step has run: all full-depth
        chunks, plus the cohort's at its last group."""
        if self.cohort is not None and self.cohort.is_last:
            return self.chunks + self.cohort.chunks
        return self.chunks

    @property
    def scheduled_chunks(self) -> list[ScheduledChunk]:
        """Every chunk that runs in this step (full depth or one layer group)."""
        return self.chunks + (self.cohort.chunks if self.cohort is not None else [])

    def work(self, num_layers: int) -> tuple[int, int, int]:
        """Work of the step, summed over the layers each chunk runs: (tokens, (query, key)
        pairs attended, cached KV tokens read). Full-depth chunks run all `num_layers`; a
        layered cohort only its group's. A chunk of n tokens from position p attends
        n*p + n*(n+1)/2 pairs per layer (causal) and reads the p + n tokens of KV it attends
        to once per layer."""
        runs = [(c, num_layers) for c in self.chunks]
        if self.cohort is not None:
            depth = self.cohort.layer_end - self.cohort.layer_start
            runs += [(c, depth) for c in self.cohort.chunks]
        tokens = sum(c.num_tokens * d for c, d in runs)
        pairs = sum(
            (c.num_tokens * c.start + c.num_tokens * (c.num_tokens + 1) // 2) * d for c, d in runs
        )
        kv_read = sum((c.start + c.num_tokens) * d for c, d in runs)
        return tokens, pairs, kv_read


class StepBuilder:
    """A step's batch under construction, with the token budget it may still spend.

    Policies add chunks in order; preempting a sequence drops its chunk and refunds its tokens.
    """

    def __init__(self, token_budget: int) -> None:
        self.budget_left = token_budget
        self._chunks: dict[int, ScheduledChunk] = {}  # seq_id -> chunk, insertion-ordered
        self.preempted: list[Sequence] = []

    def __contains__(self, seq: Sequence) -> bool:
        return seq.seq_id in self._chunks

    def add(self, seq: Sequence, num_tokens: int) -> ScheduledChunk:
        if not 0 < num_tokens <= self.budget_left:
            raise ValueError(f"chunk of {num_tokens} tokens with {self.budget_left} left")
        if num_tokens > seq.num_uncomputed_tokens or seq.seq_id in self._chunks:
            raise ValueError(f"cannot schedule {num_tokens} tokens of {seq}")
        chunk = ScheduledChunk(seq, seq.num_computed_tokens, num_tokens)
        self._chunks[seq.seq_id] = chunk
        self.budget_left -= num_tokens
        return chunk

    def drop(self, seq: Sequence) -> None:
        chunk = self._chunks.pop(seq.seq_id, None)
        if chunk is not None:
            self.budget_left += chunk.num_tokens

    def build(self, cohort: CohortStep | None = None) -> SchedulerOutput:
        chunks = list(self._chunks.values())
        n = sum(c.num_tokens for c in chunks) + (cohort.num_tokens if cohort else 0)
        return SchedulerOutput(chunks, self.preempted, n, cohort)
