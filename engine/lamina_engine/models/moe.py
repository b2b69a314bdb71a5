"""Mixture-of-experts FFN in plain torch: the reference (and test oracle) for the fused Triton
kernel in kernels/fused_moe.py, which runs the same pipeline on the GPU:

    route    : logits = x @ router^T; softmax in fp32; top-k; optional renormalisation
    permute  : sort the T*K (token, expert) pairs by expert
    experts  : per expert with tokens: h = silu(x @ w1^T) * (x @ w3^T); y = h @ w2^T
    combine  : out[token] += routing_weight * y

Shapes: T tokens, E experts, K top-k, D hidden, I expert intermediate.
Weights: w13 [E, 2I, D] (gate rows first, then up), w2 [E, D, I], router [E, D].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lamina_engine.models.config import ModelConfig
from lamina_engine.models.layers import Linear, linear


@dataclass
class ExpertStats:
    """Expert weight traffic, summed over MoE calls since the last reset.

    `experts_loaded` counts, per MoE call, the experts that had at least one routed token (each
    one's weights must be read once); `bytes_loaded` = that count * bytes per expert.
    """

    moe_calls: int = 0
    experts_loaded: int = 0
    bytes_loaded: int = 0

    def record(self, num_active_experts: int, bytes_per_expert: int) -> None:
        self.moe_calls += 1
        self.experts_loaded += num_active_experts
        self.bytes_loaded += num_active_experts * bytes_per_expert

    def reset(self) -> None:
        self.moe_calls = self.experts_loaded = self.bytes_loaded = 0


def route(router_logits: Tensor, top_k: int, renormalize: bool) -> tuple[Tensor, Tensor]:
    """router_logits [T, E] -> (weights [T, K] fp32, expert ids [T, K] int64).

    Every supported family takes softmax over all E experts in fp32, then the top k. Mixtral
    always renormalises the k probabilities to sum to 1 (identical to softmax over the top-k
    logits); Qwen3-MoE and OLMoE do so only when `norm_topk_prob` is set.
    """
    probs = torch.softmax(router_logits, dim=-1, dtype=torch.float32)
    weights, ids = torch.topk(probs, top_k, dim=-1)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, ids


def experts_forward(
    x: Tensor, weights: Tensor, ids: Tensor, w13: Tensor, w2: Tensor
) -> tuple[Tensor, Tensor]:
    """x [T, D], weights/ids [T, K], w13 [E, 2I, D], w2 [E, D, I] -> (out [T, D], counts [E]).

    Loops only over experts that got tokens; `counts[e]` is how many (token, slot) pairs
    went to expert e (one bincount: also what the expert-traffic stats need).
    """
    num_tokens, top_k = ids.shape
    num_experts, two_i, _ = w13.shape
    flat_ids = ids.reshape(-1)  # [T*K]
    counts = torch.bincount(flat_ids, minlength=num_experts)  # [E]
    order = torch.argsort(flat_ids, stable=True)  # [T*K] pair indices grouped by expert
    # One gather in, one gather out: per-expert slices of x_sorted are contiguous, and the
    # combine is a permutation + sum over K (index_add_ was the slowest op here on CPU).
    x_sorted = x.index_select(0, order // top_k)  # [T*K, D] token rows, grouped by expert
    y_sorted = torch.empty_like(x_sorted)  # [T*K, D]
    start = 0
    for expert, n in enumerate(counts.tolist()):
        if n == 0:
            continue
        rows = slice(start, start + n)
        start += n
        gate, up = linear(x_sorted[rows], w13[expert]).split(two_i // 2, dim=-1)  # [n, I]
        y_sorted[rows] = linear(F.silu(gate) * up, w2[expert])  # [n, D]
    y_sorted.mul_(weights.reshape(-1)[order, None].to(y_sorted.dtype))
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel(), device=order.device)
    out = y_sorted.index_select(0, inverse).view(num_tokens, top_k, -1).sum(dim=1)  # [T, D]
    return out, counts


class MoE(nn.Module):
    """Router + stacked experts of one layer; records expert traffic into `stats`."""

    def __init__(self, config: ModelConfig, stats: ExpertStats) -> None:
        super().__init__()
        e, d, i = config.num_experts, config.hidden_size, config.moe_intermediate_size
        self.top_k = config.num_experts_per_tok
        self.renormalize = config.norm_topk_prob
        # Qwen3-MoE/OLMoE cast routing weights back to the activation dtype before use;
        # Mixtral keeps them in fp32 (matters only for bf16/fp16).
        self.weights_in_activation_dtype = config.model_type != "mixtral"
        self.router = Linear(d, e, bias=False)  # weight [E, D]
        self.w13 = nn.Parameter(torch.empty(e, 2 * i, d))
        self.w2 = nn.Parameter(torch.empty(e, d, i))
        self.stats = stats
        self._bytes_per_expert = 3 * d * i  # times itemsize, filled in lazily per dtype

    def forward(self, x: Tensor) -> Tensor:  # x [T, D] -> [T, D]
        weights, ids = route(self.router(x), self.top_k, self.renormalize)
        if self.weights_in_activation_dtype:
            weights = weights.to(x.dtype)
        out, counts = experts_forward(x, weights, ids, self.w13, self.w2)
        active = int((counts > 0).sum())
        self.stats.record(active, self._bytes_per_expert * self.w13.element_size())
        return out
