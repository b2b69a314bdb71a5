"""The Triton path of models.attention.paged_attention: decodes through decode_attention.py,
prefill chunks through prefill_attention.py, both reading the paged cache in place (no gather
workspace). Inputs come from the step's AttentionPlan, built once per step on the host, so the
layer loop launches kernels and reads nothing back.

Shapes: T tokens in the step, H query heads, hd head_dim, cache [2, NB, BS, KV, hd].
"""

from __future__ import annotations

import torch
from torch import Tensor

from lamina_engine.kernels.decode_attention import decode_attention
from lamina_engine.kernels.prefill_attention import prefill_attention


def triton_paged_attention(q: Tensor, kv_cache: Tensor, plan, scale: float | None = None) -> Tensor:
    """q [T, H, hd] (K/V already stored) -> out [T, H, hd]; plan: models.attention.AttentionPlan."""
    out = torch.empty_like(q)
    if plan.decodes:
        rows = plan.decode_tokens
        dec = decode_attention(
            q.index_select(0, rows), kv_cache, plan.decode_tables, plan.decode_context_lens,
            plan.max_decode_context, scale,
        )  # fmt: skip
        out.index_copy_(0, rows, dec)
    if plan.prefills:
        prefill_attention(
            q, kv_cache, out, plan.prefill_starts, plan.prefill_q_lens, plan.prefill_contexts,
            plan.prefill_tables, plan.max_prefill_q_len, scale,
        )  # fmt: skip
    return out
