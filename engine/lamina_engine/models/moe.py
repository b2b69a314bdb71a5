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

import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lamina_engine.kernels.cpu_ops import MAX_ROWS, can_run, native_ops
from lamina_engine.models.config import ModelConfig
from lamina_engine.models.layers import Linear, linear


@dataclass
class ExpertStats:
    """Expert weight traffic, summed over MoE calls since the last reset.

    `experts_loaded` counts, per MoE call, the experts that had at least one routed token (each
    one's weights must be read once); `bytes_loaded` = that count * bytes per expert.
    The Triton path records device tensors (no host sync inside the layer loop); they are read
    back once, when a count is read.
    """

    moe_calls: int = 0
    _experts: int = 0
    _bytes: int = 0
    _pending: Tensor | None = None  # [2] int64 on the device: experts, bytes not yet read back

    def record(self, num_active_experts: int | Tensor, bytes_per_expert: int) -> None:
        self.moe_calls += 1
        if isinstance(num_active_experts, Tensor):
            active = num_active_experts.to(torch.int64)
            add = torch.stack([active, active * bytes_per_expert])  # no host-to-device copy
            self._pending = add if self._pending is None else self._pending + add
            return
        self._experts += num_active_experts
        self._bytes += num_active_experts * bytes_per_expert

    def _read_back(self) -> None:
        if self._pending is not None:
            experts, nbytes = self._pending.tolist()
            self._experts, self._bytes, self._pending = (
                self._experts + experts,
                self._bytes + nbytes,
                None,
            )

    @property
    def experts_loaded(self) -> int:
        self._read_back()
        return self._experts

    @property
    def bytes_loaded(self) -> int:
        self._read_back()
        return self._bytes

    def reset(self) -> None:
        self.moe_calls = self._experts = self._bytes = 0
        self._pending = None


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
    x: Tensor, weights: Tensor, ids: Tensor, w13: Tensor, w2: Tensor, invariant: bool = False
) -> tuple[Tensor, Tensor]:
    """x [T, D], weights/ids [T, K], w13 [E, 2I, D], w2 [E, D, I] -> (out [T, D], counts [E]).

    Loops only over experts that got tokens; `counts[e]` is how many (token, slot) pairs
    went to expert e (one bincount: also what the expert-traffic stats need).
    """
    num_tokens, top_k = ids.shape
    num_experts, two_i, _ = w13.shape
    flat_ids = ids.reshape(-1)  # [T*K]
    counts = torch.bincount(flat_ids, minlength=num_experts)  # [E]
    sizes = counts.tolist()
    # Lamina's grouped kernel (kernels/cpu_ops.py) takes every expert of the layer in one call
    # per GEMM: all of them under `invariant` (its rows do not depend on M), else those with at
    # most MAX_ROWS rows (a decode step's few), while an expert with more (a prefill chunk's) is
    # a real GEMM for oneDNN / MKL in the loop below.
    ops = native_ops() if can_run(x, w13, w2) else None
    limit = (num_tokens * top_k if invariant else MAX_ROWS) if ops is not None else -1
    native = [n if n <= limit else 0 for n in sizes]
    rows = sum(native)
    key = flat_ids
    if 0 < rows < flat_ids.numel():  # the kernel's experts first, so their rows are a prefix
        key = flat_ids + num_experts * (counts > limit)[flat_ids]
    order = torch.argsort(key, stable=True)  # [T*K] pair indices grouped by expert
    # One gather in, one gather out: per-expert slices of x_sorted are contiguous, and the
    # combine is a permutation + sum over K (index_add_ was the slowest op here on CPU).
    x_sorted = x.index_select(0, order // top_k)  # [T*K, D] token rows, grouped by expert
    if 0 < rows == x_sorted.shape[0]:
        y_sorted = _grouped(ops, x_sorted, w13, w2, native)
    else:
        y_sorted = torch.empty_like(x_sorted)  # [T*K, D]
        if rows:
            y_sorted[:rows] = _grouped(ops, x_sorted[:rows], w13, w2, native)
        start = rows
        for expert, n in enumerate(sizes):
            if n == 0 or native[expert]:
                continue
            span = slice(start, start + n)
            start += n
            gate, up = linear(x_sorted[span], w13[expert], None, invariant).split(
                two_i // 2, dim=-1
            )
            y_sorted[span] = linear(F.silu(gate) * up, w2[expert], None, invariant)  # [n, D]
    y_sorted.mul_(weights.reshape(-1)[order, None].to(y_sorted.dtype))
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel(), device=order.device)
    out = y_sorted.index_select(0, inverse).view(num_tokens, top_k, -1).sum(dim=1)  # [T, D]
    return out, counts


def _grouped(ops, x_sorted: Tensor, w13: Tensor, w2: Tensor, sizes: list[int]) -> Tensor:
    """The experts of `sizes` (rows per expert, in x_sorted's order) by the grouped kernel."""
    offsets = list(itertools.accumulate(sizes, initial=0))
    gate, up = ops.grouped_gemv(x_sorted, w13, offsets).split(w13.shape[1] // 2, dim=-1)
    return ops.grouped_gemv(F.silu(gate) * up, w2, offsets)  # [rows, D]


class MoE(nn.Module):
    """Router + stacked experts of one layer; records expert traffic into `stats`.

    kernels="triton" (kernels.dispatch.set_kernels) runs kernels/fused_moe.py instead of
    experts_forward, with no host sync.
    """

    kernels = "torch"
    batch_invariant = False  # layers.set_batch_invariant: CPU kernels whose rows ignore M

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
        bytes_per_expert = self._bytes_per_expert * self.w13.element_size()
        if self.kernels == "triton":
            from lamina_engine.kernels.fused_moe import fused_experts

            out, counts = fused_experts(x, weights, ids, self.w13, self.w2)
            self.stats.record((counts > 0).sum(), bytes_per_expert)  # stays on the device
            return out
        out, counts = experts_forward(x, weights, ids, self.w13, self.w2, self.batch_invariant)
        self.stats.record(int((counts > 0).sum()), bytes_per_expert)
        return out
