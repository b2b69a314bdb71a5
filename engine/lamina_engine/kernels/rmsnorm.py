"""Fused residual add + RMSNorm in Triton; the torch reference is
models.layers.RMSNorm.forward_with_residual.

Per row of D: r = x + residual (in the activation dtype, as torch adds), then
y = weight * (r / sqrt(mean(r^2) + eps)), statistics in fp32, rounded to the activation dtype
before the weight multiply (HF's order). One program per row; returns (y, r) like the reference,
r being the new residual stream. residual=None (the first layer) normalises x alone.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor


@triton.jit
def _rmsnorm_residual(
    x_ptr,
    res_ptr,
    w_ptr,
    y_ptr,
    res_out_ptr,
    dim,
    eps,
    stride_x,
    stride_r,
    HAS_RESIDUAL: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    ok = offs < dim
    r = tl.load(x_ptr + row * stride_x + offs, mask=ok, other=0.0)
    if HAS_RESIDUAL:
        r = r + tl.load(res_ptr + row * stride_r + offs, mask=ok, other=0.0)
        tl.store(res_out_ptr + row * dim + offs, r, mask=ok)
    r32 = r.to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(r32 * r32, 0) / dim + eps)
    normed = (r32 * rstd).to(r.dtype)
    w = tl.load(w_ptr + offs, mask=ok, other=0.0)
    tl.store(y_ptr + row * dim + offs, (w * normed).to(y_ptr.dtype.element_ty), mask=ok)


def rmsnorm_residual(
    x: Tensor, residual: Tensor | None, weight: Tensor, eps: float
) -> tuple[Tensor, Tensor]:
    """x, residual [T, D] (residual may be None) -> (normed [T, D], new residual [T, D])."""
    rows, dim = x.shape
    if x.stride(-1) != 1 or (residual is not None and residual.stride(-1) != 1):
        raise ValueError("rmsnorm_residual needs rows with a contiguous last dimension")
    out_dtype = torch.promote_types(weight.dtype, x.dtype)
    y = torch.empty(rows, dim, dtype=out_dtype, device=x.device)
    new_res = x if residual is None else torch.empty_like(x)
    if rows == 0:
        return y, new_res
    block = triton.next_power_of_2(dim)
    _rmsnorm_residual[(rows,)](
        x, x if residual is None else residual, weight, y, new_res, dim, eps,
        x.stride(0), 0 if residual is None else residual.stride(0),
        HAS_RESIDUAL=residual is not None, BLOCK=block, num_warps=min(max(block // 256, 1), 8),
    )  # fmt: skip
    return y, new_res
