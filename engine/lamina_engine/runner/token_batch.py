"""TokenBatch: scheduled chunks flattened sequence after sequence, the inputs of one forward.

Built once per step from the chunks (python ints); the tensors and the attention metadata are
made from it once each, before the step's first layer (on CUDA: pinned memory, one non-blocking
copy per tensor; models.attention.upload), and passed on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from lamina_engine.core.output import ScheduledChunk
from lamina_engine.models import AttentionMetadata
from lamina_engine.models.attention import upload_ints


@dataclass
class TokenBatch:
    """Per token: id and absolute position; per sequence: first position computed (its cache
    slot index, which with SPEED's upper pool is a compact slot, not the position), query length
    and block table."""

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

    @property
    def num_tokens(self) -> int:
        return len(self.positions)

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

    def input_ids(self, device: torch.device) -> Tensor:  # [T] int64
        return upload_ints(self.ids, device)

    def position_ids(self, device: torch.device) -> Tensor:  # [T] int64
        return upload_ints(self.positions, device)
