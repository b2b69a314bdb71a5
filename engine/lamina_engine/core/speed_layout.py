"""SpeedLayout (SPEED: shallow prefill, deep decode; arXiv 2605.06105): which tokens run full
depth, and where their KV lives. No torch here.

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
first block). Preemption frees both tables; recompute rebuilds both. The two pools are
speed_block_manager.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


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
