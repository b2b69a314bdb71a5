"""Triton kernels for the GPU path, each file beside the torch reference it must match.

    fused_moe      routed experts: align -> gate/up GEMM + SiLU-and-mul -> down GEMM x weight
    decode_attn    paged decode attention: split-KV, log-sum-exp merge, GQA, block tables
    kv_store       K/V of a step into the paged cache by slot mapping
    rmsnorm        fused residual add + RMSNorm
    launch_config  tuned launch parameters read from configs/*.json (data, keyed by device/shape)

Triton compiles for CUDA only; on a host without a CUDA device the kernels run under Triton's
interpreter (numpy, slow: tests and tiny benchmarks only). The interpreter is chosen when
`triton.jit` decorates a kernel, so this package sets TRITON_INTERPRET=1 before any kernel module
is imported on such a host (an explicit TRITON_INTERPRET setting wins).
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

KERNEL_MODES = ("auto", "triton", "torch")


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def resolve_kernels(mode: str, device: torch.device | str) -> str:
    """ "auto" -> "triton" on CUDA (when triton imports), "torch" elsewhere; a forced "triton"
    off CUDA needs the interpreter (TRITON_INTERPRET=1), which this package turns on by itself
    on hosts without CUDA."""
    if mode not in KERNEL_MODES:
        raise ValueError(f"kernels={mode!r}: use one of {KERNEL_MODES}")
    on_cuda = torch.device(device).type == "cuda"
    if mode == "auto":
        return "triton" if on_cuda and triton_available() else "torch"
    if mode == "triton":
        if not triton_available():
            raise ValueError("kernels='triton' but triton is not installed: pip install triton")
        if not on_cuda and not interpreted():
            raise ValueError(
                "kernels='triton' on a CPU device needs Triton's interpreter: set "
                "TRITON_INTERPRET=1 before starting (slow; meant for tests)"
            )
    return mode
