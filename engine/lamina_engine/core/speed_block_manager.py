"""SpeedBlockManager: SPEED's two KV pools, lower (one slot per position) and upper (one slot per
full-depth token). No torch. Which tokens are full depth, and why a prefix hit must stop below
the last prompt token, is in speed_layout.py.
"""

from __future__ import annotations

from ..sequence import Sequence
from .block_manager import BlockManager
from .speed_layout import SpeedLayout


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
        memo = seq.block_hash_memo(self.block_size)
        hits = self.find_cached_prefix(self._hit_scope(seq), memo)
        if not self._fits(seq.all_token_ids, hits):
            return False
        if self.upper is None:
            return True
        return self.upper.can_grow_table([], self._upper_slots(seq, seq.num_tokens))

    def allocate(self, seq: Sequence) -> int:
        if not self.can_allocate(seq):
            raise ValueError(f"not enough free blocks in the SPEED pools for {seq}")
        memo = seq.block_hash_memo(self.block_size)
        hit = self.allocate_table(seq.block_table, self._hit_scope(seq), memo)
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
