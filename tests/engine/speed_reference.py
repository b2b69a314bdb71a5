"""Dense SPEED oracle: no KV cache, no paging, explicit attention masks.

Each greedy step recomputes the whole sequence (prompt + outputs so far, n tokens) layer by
layer. Layers < K run every token with a causal mask. Layers >= K run only the full-depth
tokens (the first `anchors` prompt tokens, the last prompt token, every output token), each
continuing from its own layer K-1 output, with a causal mask over those tokens alone: that is
the SPEED visibility rule written out, independent of the engine's compact upper slots.

It reuses the engine model's weights and its per-token pieces (norms, projections, MLP/MoE,
RoPE), which test_models_hf.py checks against transformers; the attention and the masks here
are its own. Shapes: n tokens, D hidden, H heads, KV kv heads, hd head_dim.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lamina_engine.models import CausalLM
from lamina_engine.models.layers import apply_rotary


def dense_attention(attn, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor) -> Tensor:
    """x [m, D] -> [m, D]; mask [m, m] bool, True where query row i may attend key row j."""
    m = x.shape[0]
    h, kv, hd = attn.num_heads, attn.num_kv_heads, attn.head_dim
    q, k, v = attn.qkv_proj(x).split([h * hd, kv * hd, kv * hd], dim=-1)
    if attn.qk_norm == "full":
        q, k = attn.q_norm(q), attn.k_norm(k)
    if attn.clip_qkv is not None:
        q, k, v = (z.clamp(-attn.clip_qkv, attn.clip_qkv) for z in (q, k, v))
    q, k, v = q.view(m, h, hd), k.view(m, kv, hd), v.view(m, kv, hd)
    if attn.qk_norm == "per_head":
        q, k = attn.q_norm(q), attn.k_norm(k)
    q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    k, v = k.repeat_interleave(h // kv, dim=1), v.repeat_interleave(h // kv, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q, k) / hd**0.5  # [H, m, m]
    scores = scores.masked_fill(~mask[None], float("-inf"))
    out = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v)  # [m, H, hd]
    return attn.o_proj(out.reshape(m, h * hd))


@torch.no_grad()
def speed_next_token(
    model: CausalLM, tokens: list[int], num_prompt: int, prefill_layers: int, anchors: int
) -> int:
    """Greedy next token of `tokens` (prompt of `num_prompt` + outputs) under SPEED."""
    n = len(tokens)
    full = [p for p in range(n) if p < anchors or p >= num_prompt - 1]  # full-depth positions
    positions = torch.arange(n)
    hidden = model.embed(torch.tensor(tokens))
    residual = None
    rows = torch.arange(n)  # positions of the rows in `hidden`
    for i, layer in enumerate(model.layers):
        if i == prefill_layers:  # from here on only full-depth tokens exist
            rows = torch.tensor(full)
            hidden, residual = hidden[rows], residual[rows]
        cos, sin = model.rotary.cos_sin(positions[rows], hidden.dtype)
        mask = rows[None, :] <= rows[:, None]  # causal among the rows that exist here
        x, residual = layer.input_norm.forward_with_residual(hidden, residual)
        x = dense_attention(layer.attn, x, cos, sin, mask)
        x, residual = layer.post_attn_norm.forward_with_residual(x, residual)
        hidden = layer.mlp(x)
    last = model.final_norm(hidden[-1:], residual[-1:])
    return int(model.compute_logits(last).argmax(-1))


def speed_generate(
    model: CausalLM, prompt: list[int], max_tokens: int, prefill_layers: int, anchors: int
) -> list[int]:
    """Greedy output tokens (ignoring EOS) of `prompt` under SPEED with cutoff K."""
    tokens = list(prompt)
    for _ in range(max_tokens):
        tokens.append(speed_next_token(model, tokens, len(prompt), prefill_layers, anchors))
    return tokens[len(prompt) :]
