"""CohortStash: a layered-prefill cohort's hidden states between its layer groups.

A cohort runs one layer group per step (core/layered.py); its (hidden, residual) [Tc, D] after
group g wait here, on the device, until group g + 1 runs in the next step (runner/step.py).
Rows are kept per member so an aborted member's rows are simply not taken again.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lamina_engine.core.output import ScheduledChunk


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

    def rows(self, cohort_id: int, chunks: list[ScheduledChunk]) -> list[int] | None:
        """The stored rows of `chunks` (a subset of the stored members, in that order), or
        None when every member is still there (`take` then copies nothing)."""
        if cohort_id != self.cohort_id or self._hidden is None or self._residual is None:
            raise RuntimeError(
                f"cohort {cohort_id} has no hidden states stashed (holding {self.cohort_id}); "
                "its earlier layer groups did not run in this runner"
            )
        try:
            spans = [self._rows[c.seq.seq_id] for c in chunks]
        except KeyError as exc:
            raise RuntimeError(f"sequence {exc} is not a member of cohort {cohort_id}") from None
        if len(spans) == len(self._rows):
            return None
        return [row for a, b in spans for row in range(a, b)]

    def take(
        self, cohort_id: int, chunks: list[ScheduledChunk], index: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Rows of `chunks` (a subset of the stored members, in that order). `index`: those
        rows already on the device (`rows`, uploaded before the step's first layer, so taking
        reads nothing from the host)."""
        rows = self.rows(cohort_id, chunks)
        if rows is None:  # nobody dropped out: no copy
            return self._hidden, self._residual
        if index is None:
            index = torch.tensor(rows, dtype=torch.long, device=self._hidden.device)
        return self._hidden.index_select(0, index), self._residual.index_select(0, index)

    def clear(self) -> None:
        self.cohort_id, self._rows, self._hidden, self._residual = None, {}, None, None

    def __len__(self) -> int:
        return 0 if self._hidden is None else self._hidden.shape[0]
