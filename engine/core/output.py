"""What one scheduler step hands the model runner (re-exported by core/scheduler.py).

Each chunk computes positions `[start, start + num_tokens)` of one sequence; KV for positions
below `start` is already cached. Chunks are ordered running decodes first, then prefill chunks.
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
class SchedulerOutput:
    chunks: list[ScheduledChunk] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)  # freed this step; recomputed later
    num_batched_tokens: int = 0

    @property
    def is_empty(self) -> bool:
        return not self.chunks


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

    def build(self) -> SchedulerOutput:
        chunks = list(self._chunks.values())
        return SchedulerOutput(chunks, self.preempted, sum(c.num_tokens for c in chunks))
