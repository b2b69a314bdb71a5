"""Commands from the asyncio handlers to the engine thread, one dataclass per kind.

Handlers (any thread) post them on the AsyncEngine's queue; the engine thread, which alone
touches the Engine, applies them between steps and dispatches on the type (vLLM's
`EngineCoreRequestType`, as classes). A decode pod loading shipped KV posts the Kv* commands in
this order: KvReserve, one KvGroup per layer group as it arrives, then KvDone or KvFailed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lamina_engine.sampling_params import SamplingParams


@dataclass(frozen=True)
class Add:
    """Admit a request whose prompt is computed here."""

    request_id: str
    prompt: str | list[int]
    params: SamplingParams


@dataclass(frozen=True)
class Abort:
    """The client left: drop the request, its KV reservation too."""

    request_id: str


@dataclass(frozen=True)
class KvReserve:
    """Hold blocks for a prompt whose KV a prefill pod computes."""

    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    cacheable: bool = True  # may the shipped KV enter the prefix cache (its handle verified)


@dataclass(frozen=True)
class KvGroup:
    """One layer group arrived: KV [2, Lg, T, Hkv*D] (CPU) of layers from `layer_start`."""

    request_id: str
    layer_start: int
    kv: torch.Tensor


@dataclass(frozen=True)
class KvTiming:
    started: float  # perf_counter(): the feed began waiting for group 0
    arrived: float  # perf_counter(): the last group's blob came in
    nbytes: int  # wire bytes of every group


@dataclass(frozen=True)
class KvDone:
    """Every group arrived: activate the request from the token the prefill sampled."""

    request_id: str
    first_token: int
    timing: KvTiming


@dataclass(frozen=True)
class KvFailed:
    """The transfer failed: release the reservation and recompute the prompt."""

    request_id: str
    reason: str  # the lamina_kv_fallback_total label


EngineCommand = Add | Abort | KvReserve | KvGroup | KvDone | KvFailed
