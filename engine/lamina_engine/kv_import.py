"""Prefilled requests: prompts whose KV a prefill pod computed, loaded group by group.

A disaggregated decode pod does not wait for the whole prompt KV (docs/design.md §3.6 step 3):

    reserve(rid, ids, params)          blocks for the prompt, outside the running set
    load_group(rid, layer_start, kv)   scatter one layer group as soon as it arrives
    activate(rid, first_token)         every layer written: prefix-cache it, run it
    release(rid)                       on any failure or abort: give the blocks back

Groups come in layer order. Each is KV [2, Lg, T, Hkv*D] of layers [layer_start,
layer_start + Lg) for all T prompt positions; with SPEED (cutoff K) the groups below K do so,
and the one group from K holds layers [K, L) of the F full-depth prompt tokens only, their
compact upper slots [0, F) (core/speed_layout.py). A group may not straddle K. Between reserve and
activate the sequence is invisible to steps (core/scheduler.py `reserve`), so other requests
decode on while its KV lands. The Engine owns one of these; only the engine thread calls it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from lamina_engine.core.scheduler import Scheduler
from lamina_engine.core.speed_layout import SpeedLayout
from lamina_engine.models.config import ModelConfig
from lamina_engine.runner import kv_io
from lamina_engine.sampling_params import SamplingParams
from lamina_engine.sequence import Sequence


@dataclass
class _Reservation:
    seq: Sequence
    next_layer: int = 0  # layers [0, next_layer) are written


class KVImport:
    """The reservations of one engine: request id -> blocks being filled from the wire."""

    def __init__(
        self,
        scheduler: Scheduler,
        kv_caches: list[torch.Tensor],
        model_config: ModelConfig,
        speed: SpeedLayout | None,
    ) -> None:
        self.scheduler = scheduler
        self.kv_caches = kv_caches  # per layer [2, blocks, block_size, Hkv, D]
        self.dtype = kv_caches[0].dtype
        self.num_layers = model_config.num_layers  # L
        self.lower_layers = self.num_layers if speed is None else speed.prefill_layers  # K
        self.width = model_config.num_kv_heads * model_config.head_dim  # Hkv*D
        self.vocab_size = model_config.vocab_size
        self.speed = speed
        self._held: dict[str, _Reservation] = {}

    def __contains__(self, request_id: str) -> bool:
        return request_id in self._held

    def __len__(self) -> int:
        return len(self._held)

    def __iter__(self) -> Iterator[str]:
        """Ids of the requests whose KV is loading."""
        return iter(self._held)

    def sequence(self, request_id: str) -> Sequence:
        return self._get(request_id).seq

    def layers_loaded(self, request_id: str) -> int:
        """Layers [0, n) of the request's prompt KV are in the cache."""
        return self._get(request_id).next_layer

    def reserve(
        self, request_id: str, ids: list[int], params: SamplingParams, cacheable: bool = True
    ) -> bool:
        """Blocks for prompt `ids` (validated by the engine). False, nothing held, when they do
        not fit now; RequestRejectedError when they never could; ValueError when the request
        needs its prompt computed here (prompt logprobs, or min_tokens the prefill ignored).
        `cacheable` False: the KV written here never enters the prefix cache."""
        if request_id in self._held:
            raise ValueError(f"request {request_id!r} is already reserved")
        if params.logprobs is not None or params.min_tokens > 1:
            raise ValueError("logprobs and min_tokens > 1 need the prompt computed here")
        seq = Sequence(ids, params, arrival_time=time.perf_counter())
        seq.prefix_cacheable = cacheable
        if not self.scheduler.reserve(seq):
            return False
        self._held[request_id] = _Reservation(seq)
        return True

    def load_group(self, request_id: str, layer_start: int, kv: torch.Tensor) -> None:
        """Write one group (shapes in the module docstring) into the reserved blocks, skipping
        positions the prefix cache already holds. ValueError, with nothing written, when it
        does not continue the layers loaded so far or does not fit this model; the
        reservation stays until `release`."""
        r = self._get(request_id)
        if layer_start != r.next_layer:
            raise ValueError(
                f"KV group of layers from {layer_start} arrived for {request_id!r}, but layers "
                f"[0, {r.next_layer}) are loaded: groups must come in layer order"
            )
        k, p = self.lower_layers, r.seq.num_prompt_tokens
        upper = layer_start >= k and self.speed is not None and self.speed.has_upper
        tokens = self.speed.num_upper(p, p) if upper else p
        top = self.num_layers if upper else k  # a group ends at K or L, never across K
        ok = kv.dim() == 4 and kv.shape[0] == 2 and kv.shape[2:] == (tokens, self.width)
        ok = ok and 1 <= kv.shape[1] <= top - layer_start
        if not ok or kv.dtype != self.dtype:
            raise ValueError(
                f"received KV (layer {layer_start}, shape {tuple(kv.shape)}, {kv.dtype}) does "
                f"not fit [2, <= {top - layer_start} layers, {tokens}, {self.width}] "
                f"{self.dtype} (SPEED cutoff K={k}: the prefill and decode pods must run the "
                "same SPEED setting)"
            )
        seq = r.seq
        if upper:  # upper slots [0, F) are private to the sequence: never prefix hits
            kv_io.scatter_kv(self.kv_caches, seq.upper_block_table, layer_start, kv)
        else:
            hit = seq.num_cached_tokens  # prefix-cache hits already hold this KV
            kv_io.scatter_kv(self.kv_caches, seq.block_table, layer_start, kv[:, :, hit:], hit)
        r.next_layer += kv.shape[1]

    def activate(self, request_id: str, first_token: int) -> Sequence:
        """All L layers are written: the sequence runs, `first_token` (what the prefill pod
        sampled) appended. ValueError, the reservation kept, when layers are missing."""
        r = self._get(request_id)
        if r.next_layer != self.num_layers:
            raise ValueError(
                f"received KV of {request_id!r} covers {r.next_layer} of {self.num_layers} layers"
            )
        if not 0 <= first_token < self.vocab_size:
            raise ValueError(f"first token {first_token} is not in [0, {self.vocab_size})")
        del self._held[request_id]
        self.scheduler.activate(r.seq)
        r.seq.append_token(first_token)
        return r.seq

    def release(self, request_id: str) -> None:
        """Drop the reservation and free its blocks (both SPEED pools); unknown ids are fine,
        so every failure path may call it."""
        r = self._held.pop(request_id, None)
        if r is not None:
            self.scheduler.finish(r.seq, "abort")

    def _get(self, request_id: str) -> _Reservation:
        try:
            return self._held[request_id]
        except KeyError:
            raise ValueError(f"request {request_id!r} holds no prefilled reservation") from None
