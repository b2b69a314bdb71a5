"""SPEED (shallow prefill, deep decode; arXiv 2605.06105): which tokens run full depth, and the
two KV pools that hold them. No torch here.

With L layers and cutoff K, a sequence of P prompt tokens has *full-depth* tokens

    anchors     positions [0, a), a = min(anchors, P - 1)
    the rest    positions [P - 1, num_tokens): the last prompt token and every decode token

Every token runs layers [0, K) and caches KV there (the lower pool, one slot per position, as
without SPEED). Only full-depth tokens run layers [K, L); their KV lives in the upper pool,
compactly: the j-th full-depth token of a sequence takes upper slot j (its RoPE position stays
absolute). Since upper layers see exactly the full-depth tokens, the SPEED visibility rule
("anchors + last prompt token + earlier decodes + itself") is plain causal attention over the
compact upper slots, and plain causal attention over positions in the lower layers.

Prefix caching: lower blocks are shared by prefix hash as usual, but a hit may not cover a
full-depth token, because the upper table is private and would miss that token's upper KV.
So a hit stops below position P - 1 (and is disabled when anchors > 0: the anchors sit in the
first block). Preemption frees both tables; recompute rebuilds both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..sequence import Sequence
from .block_manager import BlockManager


@dataclass(frozen=True)
class SpeedLayout:
    num_layers: int  # L
    prefill_layers: int  # K in [1, L]: prompt tokens run layers [0, K)
    anchors: int = 1  # leading prompt tokens that run full depth
    upper_pool_fraction: float = 0.5  # upper-pool blocks per lower-pool block

    def __post_init__(self) -> None:
        if not 1 <= self.prefill_layers <= self.num_layers:
            raise ValueError(
                f"SPEED prefill_layers must be in [1, {self.num_layers}] (the model's layer "
                f"count), got {self.prefill_layers}"
            )
        if self.anchors < 0:
            raise ValueError(f"SPEED anchors must be >= 0, got {self.anchors}")
        if not 0.0 < self.upper_pool_fraction <= 1.0:
            raise ValueError(
                f"SPEED upper_pool_fraction must be in (0, 1], got {self.upper_pool_fraction}"
            )

    @property
    def has_upper(self) -> bool:
        """False when K = L: SPEED is then the normal engine."""
        return self.prefill_layers < self.num_layers

    def num_upper_blocks(self, num_lower_blocks: int) -> int:
        return max(1, math.ceil(num_lower_blocks * self.upper_pool_fraction))

    # ---- full-depth tokens -----------------------------------------------------------------

    def num_anchors(self, num_prompt: int) -> int:
        """a: anchors that are not also the last prompt token."""
        return max(0, min(self.anchors, num_prompt - 1))

    def num_upper(self, num_prompt: int, n: int) -> int:
        """Upper slots used by the full-depth tokens among positions [0, n)."""
        return min(n, self.num_anchors(num_prompt)) + max(0, n - (num_prompt - 1))

    def full_depth_positions(self, num_prompt: int, start: int, end: int) -> list[int]:
        """Positions in [start, end) that run full depth, ascending."""
        a = self.num_anchors(num_prompt)
        return list(range(start, min(end, a))) + list(range(max(start, num_prompt - 1), end))

    def prompt_layer_tokens(self, num_prompt: int, start: int, end: int) -> int:
        """Sum over the prompt tokens in [start, end) of the layers each runs through."""
        end = min(end, num_prompt)
        if end <= start:
            return 0
        full = len(self.full_depth_positions(num_prompt, start, end))
        return (end - start) * self.prefill_layers + full * (self.num_layers - self.prefill_layers)


class SpeedBlockManager(BlockManager):
    """The lower pool (this manager, `seq.block_table`, one slot per position) plus an upper
    pool (`self.upper`, `seq.upper_block_table`, one slot per full-depth token). The
    sequence-level operations the policies call cover both tables, so `chunked` and `layered`
    run unchanged on top of it."""

    def __init__(
        self, layout: SpeedLayout, num_blocks: int, block_size: int, enable_prefix_caching: bool
    ) -> None:
        super().__init__(num_blocks, block_size, enable_prefix_caching)
        self.layout = layout
        self.upper: BlockManager | None = None
        if layout.has_upper:
            upper_blocks = layout.num_upper_blocks(num_blocks)
            self.upper = BlockManager(upper_blocks, block_size, enable_prefix_caching=False)

    def _upper_slots(self, seq: Sequence, n: int) -> int:
        return self.layout.num_upper(seq.num_prompt_tokens, n)

    def _hit_scope(self, seq: Sequence) -> list[int]:
        """Tokens a prefix hit may be looked up in: a hit covers fewer than len(scope) tokens,
        so it never reaches position P - 1. With anchors nothing is looked up (position 0 is
        full depth); their upper KV would be missing from the private upper table."""
        if self.upper is not None and self.layout.num_anchors(seq.num_prompt_tokens) > 0:
            return []
        return seq.prompt_token_ids

    def upper_shortfall(self, seq: Sequence, total_tokens: int) -> str | None:
        """Why a request needing KV for `total_tokens` can never fit the upper pool, or None."""
        if self.upper is None:
            return None
        slots = self._upper_slots(seq, total_tokens)
        need = self.upper.blocks_for(slots)
        if need <= self.upper.num_blocks:
            return None
        return (
            f"SPEED upper layers need {slots} slots ({need} blocks of {self.block_size}) for "
            f"this request, but the upper KV pool has {self.upper.num_blocks} blocks; lower "
            "max_tokens or raise speed upper_pool_fraction / num_gpu_blocks"
        )

    # ---- sequence-level operations over both tables ----------------------------------------

    def can_allocate(self, seq: Sequence) -> bool:
        hits = self.find_cached_prefix(self._hit_scope(seq))
        if not self._fits(seq.all_token_ids, hits):
            return False
        if self.upper is None:
            return True
        return self.upper.can_grow_table([], self._upper_slots(seq, seq.num_tokens))

    def allocate(self, seq: Sequence) -> int:
        if not self.can_allocate(seq):
            raise ValueError(f"not enough free blocks in the SPEED pools for {seq}")
        hit = self.allocate_table(seq.block_table, self._hit_scope(seq))
        self.grow_table(seq.block_table, seq.num_tokens)
        if self.upper is not None:
            if seq.upper_block_table:
                raise ValueError(f"allocate needs an empty upper block table, got {seq}")
            self.upper.grow_table(seq.upper_block_table, self._upper_slots(seq, seq.num_tokens))
        seq.num_cached_tokens = hit
        seq.num_computed_tokens = hit
        return hit

    def can_append(self, seq: Sequence, num_new_tokens: int) -> bool:
        n = seq.num_computed_tokens + num_new_tokens
        if not self.can_grow_table(seq.block_table, n):
            return False
        return self.upper is None or self.upper.can_grow_table(
            seq.upper_block_table, self._upper_slots(seq, n)
        )

    def append_slots(self, seq: Sequence, num_new_tokens: int) -> None:
        n = seq.num_computed_tokens + num_new_tokens
        self.grow_table(seq.block_table, n)
        if self.upper is not None:
            self.upper.grow_table(seq.upper_block_table, self._upper_slots(seq, n))

    def free(self, seq: Sequence) -> None:
        self.free_table(seq.block_table)
        if self.upper is not None:
            self.upper.free_table(seq.upper_block_table)


def prompt_layer_tokens(chunks: list, num_layers: int, layout: SpeedLayout | None) -> int:
    """Prefill work of computed `chunks` (ScheduledChunk): sum over their prompt tokens of the
    layers each ran through (L each without SPEED). Positions past the prompt are outputs."""
    total = 0
    for c in chunks:
        p, start, end = c.seq.num_prompt_tokens, c.start, c.start + c.num_tokens
        if layout is None:
            total += max(0, min(end, p) - start) * num_layers
        else:
            total += layout.prompt_layer_tokens(p, start, end)
    return total
