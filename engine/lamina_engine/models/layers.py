"""RMSNorm, rotary embedding and the dense (SiLU-gated) MLP, as HF transformers computes them.

Shapes: T tokens, D hidden, I intermediate, hd head_dim.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lamina_engine.models.config import ModelConfig, RopeConfig

# CPU matmul kernel: one kernel for every row count, so the result for a row does not depend
# on how many other rows share the call (batch invariance). A request's rows share expert and
# projection calls with whatever else the scheduler batched, so with a kernel chosen by row
# count (torch.mm(w, x^T) for 2-4 rows, oneDNN otherwise, as before) the same token took
# different summation orders in different batches and a router near-tie could flip, giving
# different greedy tokens for the same request (docs/benchmarks.md, "Determinism").
# oneDNN's fp32 linear (torch.ops.mkldnn._linear_pointwise, the op Inductor's CPU backend emits;
# IEEE fp32, agreeing with F.linear to summation order) gives bitwise the same row for every
# M >= 2 on torch 2.13's CPU build; M = 1 takes a different (gemv) kernel, so a single row is
# computed as two (itself twice; tests/engine/test_cpu_kernels.py checks all of this). MKL's
# F.linear and torch.mm are row-invariant only from M = 4 and M = 12 on. Cost: the few-rows mm
# path streamed decode experts (2-4 rows) 1.2-1.9x faster than oneDNN (table in the docs).


def _onednn_linear():
    """oneDNN's fp32 linear if this torch build runs it, else None."""
    op = getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)
    if op is None or not torch.backends.mkldnn.is_available():
        return None
    try:
        x, w = torch.ones(3, 8), torch.ones(5, 8)
        if not torch.equal(op(x, w, None, "none", [], ""), F.linear(x, w)):
            return None
    except RuntimeError:
        return None
    return op


_ONEDNN_LINEAR = _onednn_linear()


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """F.linear for x [M, K], weight [N, K] -> [M, N] (contiguous); on the CPU in fp32 with a
    kernel whose per-row result does not depend on M (see above); F.linear otherwise."""
    if x.device.type != "cpu" or x.dim() != 2:
        return F.linear(x, weight, bias)
    if _ONEDNN_LINEAR is not None and x.dtype == weight.dtype == torch.float32:
        if x.shape[0] == 1:  # [1, K] -> [2, K]: the M >= 2 kernel, then keep the first row
            return _ONEDNN_LINEAR(x.expand(2, -1).contiguous(), weight, bias, "none", [], "")[:1]
        return _ONEDNN_LINEAR(x.contiguous(), weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """nn.Linear (same parameters and state-dict keys) computed by `linear`."""

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias)


class RMSNorm(nn.Module):
    """y = w * (x / sqrt(mean(x^2) + eps)); the statistics in fp32, then back to x's dtype.
    kernels="triton": forward_with_residual runs kernels/rmsnorm.py (add + norm in one pass)."""

    kernels = "torch"

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)

    def forward_with_residual(self, x: Tensor, residual: Tensor | None) -> tuple[Tensor, Tensor]:
        """Adds x to the residual stream, then normalises: returns (normed, new residual)."""
        if self.kernels == "triton" and x.dim() == 2:
            from lamina_engine.kernels.rmsnorm import rmsnorm_residual

            return rmsnorm_residual(x, residual, self.weight, self.eps)
        residual = x if residual is None else x + residual
        return self.forward(residual), residual


def rope_inverse_frequencies(rope: RopeConfig, head_dim: int) -> Tensor:
    """[hd/2] fp32 on the CPU, computed with the same float32 ops as HF so logits match."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64, device="cpu").float() / head_dim
    inv_freq = 1.0 / (rope.theta**exponents)
    if rope.rope_type == "linear":
        return inv_freq / rope.factor
    if rope.rope_type == "llama3":
        old_len = rope.original_max_position_embeddings
        low_freq_wavelen = old_len / rope.low_freq_factor
        high_freq_wavelen = old_len / rope.high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        # Long wavelengths (low frequencies) are slowed by `factor`, short ones kept, and the
        # band between interpolated linearly in 1/wavelen.
        scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / rope.factor, inv_freq)
        smooth = (old_len / wavelen - rope.low_freq_factor) / (
            rope.high_freq_factor - rope.low_freq_factor
        )
        smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled
        is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
        return torch.where(is_medium, smoothed, scaled)
    return inv_freq


class RotaryEmbedding:
    """Computes (cos, sin) [T, hd] for absolute positions once per forward; layers share them.

    Not an nn.Module: the inverse frequencies are derived from the config, never loaded, so the
    model can be built on the meta device without losing them.
    """

    def __init__(self, config: ModelConfig) -> None:
        self.inv_freq = rope_inverse_frequencies(config.rope, config.head_dim)  # [hd/2] fp32

    def to(self, device: torch.device | str) -> RotaryEmbedding:
        self.inv_freq = self.inv_freq.to(device)
        return self

    def cos_sin(self, positions: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        freqs = positions[:, None].float() * self.inv_freq.to(positions.device)  # [T, hd/2]
        emb = torch.cat((freqs, freqs), dim=-1)  # [T, hd]
        return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x [T, heads, hd]; cos/sin [T, hd]. Rotates the two halves of each head (NeoX style)."""
    cos, sin = cos[:, None, :], sin[:, None, :]
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class DenseMLP(nn.Module):
    """down(silu(gate(x)) * up(x)); gate and up fused as one [2I, D] projection (gate first)."""

    def __init__(self, hidden_size: int, intermediate_size: int, bias: bool) -> None:
        super().__init__()
        self.intermediate_size = intermediate_size
        self.gate_up_proj = Linear(hidden_size, 2 * intermediate_size, bias=bias)
        self.down_proj = Linear(intermediate_size, hidden_size, bias=bias)

    def forward(self, x: Tensor) -> Tensor:  # x [T, D] -> [T, D]
        gate, up = self.gate_up_proj(x).split(self.intermediate_size, dim=-1)
        return self.down_proj(F.silu(gate) * up)
