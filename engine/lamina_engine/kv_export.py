"""KV export: the connector a prefill pod plugs into its Engine to ship each prompt's KV.

The engine calls the connector on its own thread: `on_step` after every step (a layered
cohort's layer group may have just written its members' KV) and `on_finish` when a request ends
normally, before its blocks are freed. The connector reads KV only through `PromptKV`, so the
server never touches the engine's cache or scheduler. A prompt ships in G layer groups
[2, Lg, T, Hkv*D] (CPU), the last with the first sampled token:

    layered cohort:   group g ships as soon as it is computed, while group g + 1 runs
    any other prompt: all groups at its finish

With SPEED (cutoff K) the groups split [0, K), and one last object carries layers [K, L) of
the F full-depth prompt tokens only: their compact upper slots [0, F) (core/speed_layout.py),
so [2, L - K, F, Hkv*D] rather than all T positions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from lamina_engine.core.layered import split_layers
from lamina_engine.core.speed_layout import SpeedLayout
from lamina_engine.runner import kv_io
from lamina_engine.sequence import Sequence

if TYPE_CHECKING:
    from lamina_engine.step_result import StepResult

# ship(request_id, group_index, layer_start, kv [2, Lg, T, Hkv*D] on the CPU, first_token):
# first_token is set on the request's last group only.
Ship = Callable[[str, int, int, torch.Tensor, "int | None"], None]


class PromptKV:
    """One request's prompt KV in the engine's cache; read it on the engine thread only."""

    def __init__(
        self,
        kv_caches: list[torch.Tensor],
        seq: Sequence,
        num_layers: int,
        speed: SpeedLayout | None,
    ) -> None:
        self._caches, self._seq, self._speed = kv_caches, seq, speed
        self.num_layers = num_layers  # L
        self.lower_layers = num_layers if speed is None else speed.prefill_layers  # K
        self.num_tokens = seq.num_prompt_tokens  # T

    def layers(self, start: int, end: int) -> torch.Tensor:
        """KV [2, end - start, T, Hkv*D] (CPU) of every prompt position, layers below K."""
        kv = kv_io.gather_kv(self._caches, self._seq.block_table, start, end, self.num_tokens)
        return kv.cpu()

    def upper(self) -> torch.Tensor | None:
        """SPEED: KV [2, L - K, F, Hkv*D] (CPU) of the F full-depth prompt tokens; else None."""
        speed, n = self._speed, self.num_tokens
        if speed is None or not speed.has_upper:
            return None
        table = self._seq.upper_block_table
        full = speed.num_upper(n, n)
        return kv_io.gather_kv(self._caches, table, self.lower_layers, self.num_layers, full).cpu()


class KVExport:
    """Ships every finished prompt's KV through `ship` in `num_groups` layer groups."""

    def __init__(self, ship: Ship, num_groups: int) -> None:
        self.ship = ship
        self.num_groups = num_groups
        self._shipped: dict[str, tuple[int, int]] = {}  # request id -> (groups, layers) sent
        self.groups_shipped_early = 0  # groups shipped while a later group still computed

    def on_step(self, result: StepResult) -> None:
        """A cohort group just wrote its layers' KV for its members: ship it now, while the
        next group computes (the last group goes at the finish, with the first token)."""
        group = result.layer_group
        if group is None or group.is_last:
            return
        for rid, kv in group.prompts.items():
            sent, covered = self._shipped.get(rid, (0, 0))
            if covered != group.layer_start:
                continue
            self.ship(
                rid, sent, group.layer_start, kv.layers(group.layer_start, group.layer_end), None
            )
            self._shipped[rid] = (sent + 1, group.layer_end)
            self.groups_shipped_early += 1

    def on_finish(self, request_id: str, kv: PromptKV, first_token: int) -> None:
        """The request ended normally: ship the layers not shipped yet, the last object with
        the first token."""
        sent, covered = self._shipped.pop(request_id, (0, 0))
        if covered == 0:
            groups = split_layers(kv.lower_layers, self.num_groups)
        else:
            groups = [(covered, kv.lower_layers)]
        parts = [(start, kv.layers(start, end)) for start, end in groups]
        upper = kv.upper()
        if upper is not None:
            parts.append((kv.lower_layers, upper))
        for i, (start, tensor) in enumerate(parts):
            last = i == len(parts) - 1
            self.ship(request_id, sent + i, start, tensor, first_token if last else None)

    def forget(self, request_id: str) -> None:
        """The request was aborted: nothing more of it ships."""
        self._shipped.pop(request_id, None)
