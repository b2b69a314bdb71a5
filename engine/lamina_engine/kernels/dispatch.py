"""Choosing a model's kernels: the Triton path or the torch path, per model instance.

Modules with a choice declare a `kernels` attribute ("torch" by default): RMSNorm (fused
residual + norm), the attention layer (KV store, decode attention), MoE (fused experts, expert
traffic counted on the device). `set_kernels` resolves "auto" for the model's device and sets it
on every such module, so two models in one process can run different paths (the tests compare
them side by side).
"""

from __future__ import annotations

from torch import nn

from lamina_engine.kernels import resolve_kernels


def set_kernels(model: nn.Module, mode: str) -> str:
    """Sets `mode` ("auto" | "triton" | "torch") on every module of `model` that has a kernel
    choice; returns the resolved mode ("triton" or "torch")."""
    device = next(model.parameters()).device
    resolved = resolve_kernels(mode, device)
    for module in model.modules():
        if hasattr(module, "kernels"):
            module.kernels = resolved
    return resolved
