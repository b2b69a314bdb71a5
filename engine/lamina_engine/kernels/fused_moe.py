"""Fused MoE experts in Triton; the torch reference is models.moe.experts_forward.

Shapes: T tokens, K top-k, P = T*K (token, slot) pairs, E experts, D hidden, I expert width,
BM = BLOCK_M rows per tile. Weights as the model keeps them: w13 [E, 2I, D] (gate rows, then up),
w2 [E, D, I].

    align    (torch ops, on the device, no host sync) pairs sorted by expert, each expert's run
             padded to a multiple of BM: sorted_ids [P + E*(BM-1)] (padding = P), block_expert
             [that / BM] (-1 past the end), padded_count [1]
    gemm 1   per tile of BM pairs of one expert: h = silu(x @ w1^T) * (x @ w3^T)   -> h [P, I]
             (x rows gathered as pair // K; gate and up accumulated side by side, so the
             [P, 2I] intermediate never exists)
    gemm 2   y = (h @ w2^T) * routing weight                                        -> y [P, D]
    combine  out = y.view(T, K, D).sum(1)

The grid is sized for the worst case (every expert padded), so launching needs no host sync;
tiles past padded_count return at once. Expert traffic for the stats is (counts > 0).sum() as a
device tensor, read only when the stats are read.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from lamina_engine.kernels.launch_config import launch_config


def align_block_size(
    ids: Tensor, num_experts: int, block_m: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """ids [T, K] -> (sorted_ids [P + E*(BM-1)] int32, block_expert [blocks] int32,
    padded_count [1] int32, counts [E] int32); all device tensors, no host sync."""
    flat = ids.reshape(-1)
    num_pairs = flat.numel()
    device = flat.device
    # scatter_add, not bincount: bincount on CUDA reads max(ids) back to the host.
    counts = torch.zeros(num_experts, dtype=torch.int64, device=device)
    counts.scatter_add_(0, flat, torch.ones_like(flat))
    padded = (counts + block_m - 1) // block_m * block_m  # [E]
    padded_end = torch.cumsum(padded, 0)  # [E] where each expert's padded run ends
    padded_start = padded_end - padded
    start = torch.cumsum(counts, 0) - counts  # [E] unpadded run starts
    order = torch.argsort(flat, stable=True)  # [P] pair ids grouped by expert
    expert_of = flat[order]
    dest = padded_start[expert_of] + torch.arange(num_pairs, device=device) - start[expert_of]
    capacity = num_pairs + num_experts * (block_m - 1)
    sorted_ids = torch.full((capacity,), num_pairs, dtype=torch.int32, device=device)
    sorted_ids.scatter_(0, dest, order.to(torch.int32))
    num_blocks = triton.cdiv(capacity, block_m)
    block_start = torch.arange(num_blocks, device=device) * block_m
    block_expert = torch.searchsorted(padded_end, block_start, right=True)
    block_expert = torch.where(block_expert < num_experts, block_expert, -1).to(torch.int32)
    return sorted_ids, block_expert, padded_end[-1:].to(torch.int32), counts.to(torch.int32)


@triton.jit
def _moe_gemm(
    a_ptr,  # [rows, Kd] activations; row of pair p is p // A_DIV
    w_ptr,  # [E, N(*2 if GATED), Kd]
    c_ptr,  # [P, N] output, row = pair id
    route_w_ptr,  # [P] routing weights (used if MUL_WEIGHT)
    sorted_ids_ptr,
    block_expert_ptr,
    padded_count_ptr,
    N,
    Kd,
    num_pairs,
    stride_am,
    stride_we,
    stride_wn,
    stride_cm,
    up_offset,  # elements from a gate row to its up row (I * stride_wn)
    A_DIV: tl.constexpr,
    GATED: tl.constexpr,
    MUL_WEIGHT: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    PRECISION: tl.constexpr,
):
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(tl.num_programs(0), tl.cdiv(N, BLOCK_N))
    num_pid_n = tl.cdiv(N, BLOCK_N)
    # Grouped ordering: GROUP_M row tiles share each column tile of w while it sits in L2.
    group = pid // (GROUP_M * num_pid_n)
    first_m = group * GROUP_M
    group_size = min(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % (GROUP_M * num_pid_n)) % group_size
    pid_n = (pid % (GROUP_M * num_pid_n)) // group_size
    if pid_m * BLOCK_M >= tl.load(padded_count_ptr):
        return
    expert = tl.load(block_expert_ptr + pid_m).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    pair = tl.load(sorted_ids_ptr + offs_m)
    row_ok = pair < num_pairs
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = offs_n < N
    offs_k = tl.arange(0, BLOCK_K)
    a_rows = a_ptr + (pair // A_DIV).to(tl.int64)[:, None] * stride_am
    w_cols = w_ptr + expert * stride_we + offs_n.to(tl.int64)[None, :] * stride_wn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_up = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, Kd, BLOCK_K):
        k_ok = (k0 + offs_k) < Kd
        a = tl.load(
            a_rows + (k0 + offs_k)[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0
        )
        w_mask = k_ok[:, None] & col_ok[None, :]
        w = tl.load(w_cols + (k0 + offs_k)[:, None], mask=w_mask, other=0.0)  # [BK, BN]
        acc = tl.dot(a, w, acc, input_precision=PRECISION)
        if GATED:
            w_up = tl.load(w_cols + up_offset + (k0 + offs_k)[:, None], mask=w_mask, other=0.0)
            acc_up = tl.dot(a, w_up, acc_up, input_precision=PRECISION)
    if GATED:
        acc = acc * tl.sigmoid(acc) * acc_up
    if MUL_WEIGHT:
        acc = acc * tl.load(route_w_ptr + pair, mask=row_ok, other=0.0).to(tl.float32)[:, None]
    c = c_ptr + pair.to(tl.int64)[:, None] * stride_cm + offs_n[None, :]
    tl.store(c, acc.to(c_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


def _launch(a, w, c, route_w, align, n, kd, a_div, gated, mul_weight, cfg) -> None:
    sorted_ids, block_expert, padded_count, _ = align
    num_pid_m = block_expert.numel()
    grid = (num_pid_m * triton.cdiv(n, cfg["BLOCK_N"]),)
    precision = "ieee" if a.dtype == torch.float32 else "tf32"
    _moe_gemm[grid](
        a, w, c, route_w, sorted_ids, block_expert, padded_count,
        n, kd, c.shape[0], a.stride(0), w.stride(0), w.stride(1), c.stride(0),
        (w.shape[1] // 2) * w.stride(1),
        A_DIV=a_div, GATED=gated, MUL_WEIGHT=mul_weight,
        BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"],
        GROUP_M=cfg["GROUP_M"], PRECISION=precision,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )  # fmt: skip


def fused_experts(
    x: Tensor, weights: Tensor, ids: Tensor, w13: Tensor, w2: Tensor
) -> tuple[Tensor, Tensor]:
    """Same contract as models.moe.experts_forward: x [T, D], weights/ids [T, K], w13 [E, 2I, D],
    w2 [E, D, I] -> (out [T, D], counts [E] pairs per expert, on the device)."""
    num_tokens, top_k = ids.shape
    num_experts, two_i, d = w13.shape
    inter = two_i // 2
    if x.stride(-1) != 1 or w13.stride(-1) != 1 or w2.stride(-1) != 1:
        raise ValueError("fused_experts needs row-major x, w13 and w2 (last stride 1)")
    shape_key = f"E={num_experts},N={inter},D={d}"
    cfg = launch_config("fused_moe", x.device, shape_key, num_tokens)
    align = align_block_size(ids, num_experts, cfg["BLOCK_M"])
    num_pairs = num_tokens * top_k
    h = torch.empty(num_pairs, inter, dtype=x.dtype, device=x.device)  # [P, I]
    _launch(x, w13, h, weights, align, inter, d, top_k, True, False, cfg)
    y = torch.empty(num_pairs, d, dtype=x.dtype, device=x.device)  # [P, D]
    route_w = weights.reshape(-1).to(x.dtype)  # the torch path scales in the activation dtype
    _launch(h, w2, y, route_w, align, d, inter, 1, False, True, cfg)
    return y.view(num_tokens, top_k, d).sum(dim=1), align[3]
