"""RMSNorm, rotary embedding and the dense (SiLU-gated) MLP, as HF transformers computes them.

Shapes: T tokens, D hidden, I intermediate, hd head_dim.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lamina_engine.kernels.cpu_ops import MAX_ROWS, can_run, native_ops
from lamina_engine.models.config import ModelConfig, RopeConfig

# CPU matmul kernel choice, measured on torch 2.13's CPU build (docs/benchmarks.md, "CPU matmul
# kernels", "Determinism" and "CPU decode kernels"). A weight w [N, K] times x [M, K] rows is bound
# by streaming w for small M. Default (fastest per M):
# - M <= cpu_ops.MAX_ROWS (a decode step: its batch, or an expert's few rows), fp32: Lamina's
#   AVX-512/AVX2 kernel (kernels/cpu_ops.py): as fast as the best of F.linear, mm and oneDNN
#   for each M up to 32, and up to 2.5x faster (at 2-8 rows); where it is unavailable, the two
#   kernels below;
# - 2 <= M <= 4: torch.mm(w, x^T), x^T a transposed view of row-major x (mm with a row-major
#   [K, M] operand is 4x slower);
# - otherwise oneDNN's fp32 linear (torch.ops.mkldnn._linear_pointwise, the op Inductor's CPU
#   backend emits), 1.2-2.3x faster than F.linear from M = 6 on; for M = 1 a gemv.
# All IEEE fp32, differing only in summation order -- but that order depends on M, so a row's
# rounding depends on how many rows share the call, i.e. on the rest of the batch, and at a
# router near-tie a request's greedy tokens can depend on its batch. `invariant=True`
# (EngineConfig.batch_invariant) uses Lamina's kernel for every M (a row's bits never depend on
# M; 0.6-0.8x oneDNN's speed past ~64 rows), or where it is unavailable oneDNN's M >= 2 kernel
# for every M (a single row runs as two, 3.2-3.6x the gemv): batch-invariant either way
# (tests/engine/test_cpu_kernels.py checks both paths).
_CPU_FEW_ROWS = range(2, 5)


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


def linear(
    x: Tensor, weight: Tensor, bias: Tensor | None = None, invariant: bool = False
) -> Tensor:
    """F.linear for x [M, K], weight [N, K] -> [M, N] (contiguous); on the CPU the fastest
    kernel for M, or with `invariant` one whose per-row result does not depend on M (see above);
    F.linear itself off the CPU."""
    if x.device.type != "cpu" or x.dim() != 2:
        return F.linear(x, weight, bias)
    onednn = _ONEDNN_LINEAR is not None and x.dtype == weight.dtype == torch.float32
    few = invariant or x.shape[0] <= MAX_ROWS  # Lamina's kernel: its rows ignore M
    if few and x.dtype == torch.float32 and can_run(weight) and (ops := native_ops()):
        out = ops.grouped_gemv(x.contiguous(), weight[None], [0, x.shape[0]])
        return out if bias is None else out.add_(bias)
    if invariant and onednn:
        if x.shape[0] == 1:  # [1, K] -> [2, K]: the M >= 2 kernel, then keep the first row
            return _ONEDNN_LINEAR(x.expand(2, -1).contiguous(), weight, bias, "none", [], "")[:1]
        return _ONEDNN_LINEAR(x.contiguous(), weight, bias, "none", [], "")
    if x.shape[0] in _CPU_FEW_ROWS:
        out = torch.mm(weight, x.t()).t().contiguous()  # [N, M] -> [M, N]
        return out if bias is None else out.add_(bias)
    if onednn:
        return _ONEDNN_LINEAR(x.contiguous(), weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


def set_batch_invariant(model: nn.Module, on: bool) -> None:
    """Every module of `model` that runs `linear` (Linear, MoE, CausalLM's LM head) uses the
    batch-invariant CPU kernels when `on` (EngineConfig.batch_invariant)."""
    for module in model.modules():
        if hasattr(module, "batch_invariant"):
            module.batch_invariant = on


class Linear(nn.Linear):
    """nn.Linear (same parameters and state-dict keys) computed by `linear`."""

    batch_invariant = False  # set_batch_invariant

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias, self.batch_invariant)


class RMSNorm(nn.Module):
    """y = w * (x / sqrt(mean(x^2) + eps)); the statistics in fp32, then back to x's dtype.
    kernels="triton": forward_with_residual runs kernels/rmsnorm.py (add + norm in one pass)."""

    kernels = "torch"

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        if (ops := self._cpu_ops(x)) is not None:  # one pass per row (kernels/cpu_ops.py)
            return ops.rms_norm(x, self.weight, self.eps)
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)

    def forward_with_residual(self, x: Tensor, residual: Tensor | None) -> tuple[Tensor, Tensor]:
        """Adds x to the residual stream, then normalises: returns (normed, new residual)."""
        if self.kernels == "triton" and x.dim() == 2:
            from lamina_engine.kernels.rmsnorm import rmsnorm_residual

            return rmsnorm_residual(x, residual, self.weight, self.eps)
        if residual is not None and x.dim() == 2 and (ops := self._cpu_ops(x, residual)):
            return ops.add_rms_norm(x, residual, self.weight, self.eps)
        residual = x if residual is None else x + residual
        return self.forward(residual), residual

    def _cpu_ops(self, *xs: Tensor):
        """Lamina's CPU kernels when they take every x (fp32, [T, D] or [T, H, D], unit stride
        along D) and the weight (fp32 on the CPU), else None."""
        for x in xs:
            if x.dtype != torch.float32 or x.dim() not in (2, 3) or x.stride(-1) != 1:
                return None
        return native_ops() if can_run(self.weight) else None


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
