"""Kernel tests: each Triton kernel against its torch reference.

On a host without CUDA the kernels run under Triton's interpreter (lamina_engine.kernels turns it
on); the `device_dtype` fixture gives (cpu, fp32) there, and adds (cuda, bf16) marked `gpu`, which
skips only when no CUDA device exists.
"""

from __future__ import annotations

import pytest
import torch

import lamina_engine.kernels  # noqa: F401  (sets TRITON_INTERPRET=1 on CUDA-less hosts first)

_NO_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

DEVICE_DTYPES = [
    pytest.param(("cpu", torch.float32), id="cpu-fp32"),
    pytest.param(("cuda", torch.bfloat16), id="cuda-bf16", marks=[pytest.mark.gpu, _NO_CUDA]),
]

# Tolerances against an fp32 reference computed from the same (rounded) inputs.
TOLERANCE = {torch.float32: dict(atol=1e-5, rtol=1e-4), torch.bfloat16: dict(atol=3e-2, rtol=3e-2)}


@pytest.fixture(params=DEVICE_DTYPES)
def device_dtype(request) -> tuple[torch.device, torch.dtype]:
    device, dtype = request.param
    if device == "cpu" and torch.cuda.is_available():
        pytest.skip("CPU (interpreter) cases run on hosts without CUDA; the cuda cases run here")
    return torch.device(device), dtype
