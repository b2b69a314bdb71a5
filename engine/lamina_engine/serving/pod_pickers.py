"""Which prefill pod and which decode pod serve a request (docs/design.md §4).

Prefill, `prefix-load`: the pod whose prefix cache (as the router remembers it: the block hashes
of prompts it sent there) matches the longest prefix of the prompt; among equals, the least
outstanding prefill FLOPs. `least-load`: FLOPs only. Outstanding FLOPs are estimated from the
model config and the uncached prompt length, decay exponentially with `load_decay_seconds`
(so a lost completion does not pin a pod as busy) and are taken off when the prefill returns.
Decode, `least-kv`: lowest KV-cache utilisation, then smallest running batch, as last polled,
plus the router's own in-flight requests there since the poll.
"""

from __future__ import annotations

import itertools
import math
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

PREFIX_MEMORY_BLOCKS = 65536  # block hashes remembered per prefill pod (LRU)


def prefill_flops(model: dict, new_tokens: int, cached_tokens: int = 0) -> float:
    """FLOPs to prefill `new_tokens` after `cached_tokens`, from an HF config.json dict:
    2 x active weights per token (attention projections, active experts or dense MLP, LM head)
    + attention scores and values, 4 x heads x head_dim x (context each token attends to)."""
    d = model.get("hidden_size", 0)
    layers = model.get("num_hidden_layers", 0)
    heads = model.get("num_attention_heads", 1)
    kv_heads = model.get("num_key_value_heads", heads)
    head_dim = model.get("head_dim") or (d // max(heads, 1))
    experts = model.get("num_experts") or model.get("num_local_experts") or 0
    top_k = model.get("num_experts_per_tok", 0)
    inter = model.get("moe_intermediate_size") or model.get("intermediate_size", 0)
    mlp = 3 * d * (inter * top_k if experts else model.get("intermediate_size", 0))
    attn_proj = d * head_dim * (2 * heads + 2 * kv_heads)
    weights = layers * (attn_proj + mlp) + d * model.get("vocab_size", 0)
    mean_context = cached_tokens + (new_tokens + 1) / 2
    attention = 4 * layers * heads * head_dim * mean_context
    return float(new_tokens) * (2 * weights + attention)


class DecayingLoad:
    """Outstanding work that fades with time constant `decay_s` seconds."""

    def __init__(self, decay_s: float) -> None:
        self.decay_s = decay_s
        self._value = 0.0
        self._at = time.monotonic()

    def value(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        return self._value * math.exp(-(now - self._at) / self.decay_s)

    def add(self, amount: float) -> None:
        now = time.monotonic()
        self._value = max(0.0, self.value(now) + amount)
        self._at = now


@dataclass
class BackendState:
    """What the router knows of one engine pod."""

    address: str  # host:port
    service: str  # "prefill" or "decode": which service list it came from
    decay_s: float = 10.0
    role: str | None = None  # as the pod reports it: unified | prefill | decode
    ready: bool = False
    draining: bool = False
    kv_usage: float = 0.0
    running: int = 0
    waiting: int = 0
    in_flight: int = 0  # this router's open requests to it
    load: DecayingLoad = field(init=False)
    prefix: OrderedDict = field(default_factory=OrderedDict)  # block hash -> None, LRU

    def __post_init__(self) -> None:
        self.load = DecayingLoad(self.decay_s)

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    @property
    def available(self) -> bool:
        return self.ready and not self.draining

    def prefix_match(self, hashes: Sequence[int]) -> int:
        n = 0
        for h in hashes:
            if h not in self.prefix:
                break
            n += 1
        return n

    def remember(self, hashes: Sequence[int]) -> None:
        for h in hashes:
            self.prefix[h] = None
            self.prefix.move_to_end(h)
        while len(self.prefix) > PREFIX_MEMORY_BLOCKS:
            self.prefix.popitem(last=False)


class PrefillPicker:
    def __init__(self, policy: str, model: dict, block_size: int) -> None:
        if policy not in ("prefix-load", "least-load", "round-robin"):
            raise ValueError(f"unknown prefill picker {policy!r}")
        self.policy, self.model, self.block_size = policy, model, block_size
        self._rr = itertools.count()

    def pick(
        self, pods: list[BackendState], hashes: Sequence[int], num_tokens: int
    ) -> tuple[BackendState, float]:
        """The pod and the FLOPs this prompt adds to it."""
        if not pods:
            raise LookupError("no prefill pod is ready")
        if self.policy == "round-robin":
            pod = pods[next(self._rr) % len(pods)]
            return pod, prefill_flops(self.model, num_tokens)
        now = time.monotonic()
        best, best_key, best_cost = None, None, 0.0
        for pod in pods:
            match = pod.prefix_match(hashes) if self.policy == "prefix-load" else 0
            cached = min(match * self.block_size, max(0, num_tokens - 1))
            cost = prefill_flops(self.model, num_tokens - cached, cached)
            key = (-match, pod.load.value(now) + cost)
            if best_key is None or key < best_key:
                best, best_key, best_cost = pod, key, cost
        return best, best_cost


class DecodePicker:
    def __init__(self, policy: str) -> None:
        if policy not in ("least-kv", "round-robin"):
            raise ValueError(f"unknown decode picker {policy!r}")
        self.policy = policy
        self._rr = itertools.count()

    def pick(self, pods: list[BackendState]) -> BackendState:
        if not pods:
            raise LookupError("no decode pod is ready")
        if self.policy == "round-robin":
            return pods[next(self._rr) % len(pods)]
        # Ties (idle pods, a freshly scaled-out one) take turns: otherwise one-at-a-time
        # requests all land on the first pod listed and a new pod gets nothing until load rises.
        loads = [(round(p.kv_usage, 2), p.running + p.in_flight) for p in pods]
        least = min(loads)
        tied = [p for p, load in zip(pods, loads) if load == least]
        return tied[next(self._rr) % len(tied)]
