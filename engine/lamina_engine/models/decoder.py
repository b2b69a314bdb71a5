"""CausalLM: embed -> decoder layers -> final norm -> lm_head, callable a layer range at a time.

Decoder layer (every family): RMSNorm -> attention (GQA, RoPE, optional q/k norm) -> RMSNorm ->
dense MLP or MoE, with the residual stream carried beside the hidden state so the next norm can
add it (`forward_layers` returns both; `final_norm` folds them).

Shapes: T tokens, D hidden, V vocab, H heads, KV kv heads, hd head_dim.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from lamina_engine.models.attention import (
    AttentionMetadata,
    AttentionPlan,
    paged_attention,
    write_kv_cache,
)
from lamina_engine.models.config import ModelConfig
from lamina_engine.models.layers import (
    DenseMLP,
    Linear,
    RMSNorm,
    RotaryEmbedding,
    apply_rotary,
    linear,
)
from lamina_engine.models.moe import ExpertStats, MoE

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


class Attention(nn.Module):
    kernels = "torch"  # or "triton" (kernels.dispatch.set_kernels): KV store + paged attention

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        h, kv, hd, d = config.num_heads, config.num_kv_heads, config.head_dim, config.hidden_size
        self.num_heads, self.num_kv_heads, self.head_dim = h, kv, hd
        self.clip_qkv = config.clip_qkv
        # q, k, v fused into one [(H + 2 KV) * hd, D] projection: one matmul per layer.
        self.qkv_proj = Linear(d, (h + 2 * kv) * hd, bias=config.attention_bias)
        self.o_proj = Linear(h * hd, d, bias=config.attention_bias)
        self.qk_norm = config.qk_norm
        if config.qk_norm == "per_head":
            self.q_norm = RMSNorm(hd, config.rms_norm_eps)
            self.k_norm = RMSNorm(hd, config.rms_norm_eps)
        elif config.qk_norm == "full":
            self.q_norm = RMSNorm(h * hd, config.rms_norm_eps)
            self.k_norm = RMSNorm(kv * hd, config.rms_norm_eps)

    def forward(
        self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        kv_cache: Tensor,
        md: AttentionMetadata,
        plan: AttentionPlan,
    ) -> Tensor:  # x [T, D] -> [T, D]
        t = x.shape[0]
        h, kv, hd = self.num_heads, self.num_kv_heads, self.head_dim
        q, k, v = self.qkv_proj(x).split([h * hd, kv * hd, kv * hd], dim=-1)
        if self.qk_norm == "full":  # OLMoE: norm over the whole projection, then clip
            q, k = self.q_norm(q), self.k_norm(k)
        if self.clip_qkv is not None:
            q, k, v = (z.clamp(-self.clip_qkv, self.clip_qkv) for z in (q, k, v))
        q, k, v = q.view(t, h, hd), k.view(t, kv, hd), v.view(t, kv, hd)
        if self.qk_norm == "per_head":
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        write_kv_cache(kv_cache, md.slot_mapping, k, v, self.kernels)
        out = paged_attention(q, kv_cache, plan, kernels=self.kernels)  # [T, H, hd]
        return self.o_proj(out.reshape(t, h * hd))


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer: int, stats: ExpertStats) -> None:
        super().__init__()
        self.input_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.attn = Attention(config)
        self.post_attn_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp: nn.Module
        if config.is_moe_layer(layer):
            self.mlp = MoE(config, stats)
        else:
            self.mlp = DenseMLP(config.hidden_size, config.intermediate_size, config.mlp_bias)

    def forward(
        self,
        hidden: Tensor,
        residual: Tensor | None,
        cos: Tensor,
        sin: Tensor,
        kv_cache: Tensor,
        md: AttentionMetadata,
        plan: AttentionPlan,
    ) -> tuple[Tensor, Tensor]:
        x, residual = self.input_norm.forward_with_residual(hidden, residual)
        x = self.attn(x, cos, sin, kv_cache, md, plan)
        x, residual = self.post_attn_norm.forward_with_residual(x, residual)
        return self.mlp(x), residual


class CausalLM(nn.Module):
    batch_invariant = False  # layers.set_batch_invariant (the LM head's kernel)

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.expert_stats = ExpertStats()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            DecoderLayer(config, i, self.expert_stats) for i in range(config.num_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        # Tied models read the embedding matrix as the LM head (no second copy).
        self.lm_head = (
            None
            if config.tie_word_embeddings
            else Linear(config.hidden_size, config.vocab_size, bias=False)
        )
        self.rotary = RotaryEmbedding(config)

    @property
    def num_layers(self) -> int:
        return self.config.num_layers

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        progress: bool = False,
    ) -> CausalLM:
        """Loads an HF checkpoint folder; raises CheckpointError naming what is wrong.

        progress=True shows a tqdm bar over the tensors being read (large checkpoints)."""
        from lamina_engine.models.checkpoint import load_checkpoint

        if dtype not in SUPPORTED_DTYPES:
            raise ValueError(f"dtype {dtype} is not supported; use one of {SUPPORTED_DTYPES}")
        config, state_dict = load_checkpoint(path, dtype=dtype, device=device, progress=progress)
        with torch.device("meta"):
            model = cls(config)
        model.load_state_dict(state_dict, strict=True, assign=True)
        model.rotary.to(device)
        return model.eval()

    @torch.no_grad()
    def embed(self, input_ids: Tensor) -> Tensor:  # [T] -> [T, D]
        return self.embed_tokens(input_ids)

    @torch.no_grad()
    def forward_layers(
        self,
        start: int,
        end: int,
        positions: Tensor,
        hidden: Tensor,
        residual: Tensor | None,
        attn_md: AttentionMetadata,
        kv_caches: list[Tensor],
    ) -> tuple[Tensor, Tensor]:
        """Runs layers [start, end) on hidden [T, D]; kv_caches is indexed by absolute layer.

        Pass residual=None at layer 0 (the embeddings start the residual stream) and the
        returned (hidden, residual) to the next range; `final_norm` folds them after the last.
        """
        if not 0 <= start < end <= self.num_layers:
            raise ValueError(f"layer range [{start}, {end}) is outside [0, {self.num_layers})")
        if residual is None and start != 0:
            raise ValueError(f"residual is None but the range starts at layer {start}, not 0")
        cos, sin = self.rotary.cos_sin(positions, hidden.dtype)  # [T, hd] each
        for i in range(start, end):
            hidden, residual = self.layers[i](
                hidden, residual, cos, sin, kv_caches[i], attn_md, attn_md.plan
            )
        return hidden, residual

    @torch.no_grad()
    def final_norm(self, hidden: Tensor, residual: Tensor) -> Tensor:  # -> [T, D]
        return self.norm(hidden + residual)

    @torch.no_grad()
    def forward(
        self,
        input_ids: Tensor,
        positions: Tensor,
        attn_md: AttentionMetadata,
        kv_caches: list[Tensor],
    ) -> Tensor:  # input_ids [T] -> normed hidden [T, D]
        hidden, residual = self.forward_layers(
            0, self.num_layers, positions, self.embed(input_ids), None, attn_md, kv_caches
        )
        return self.final_norm(hidden, residual)

    @torch.no_grad()
    def compute_logits(self, hidden: Tensor) -> Tensor:  # [N, D] -> [N, V] fp32
        weight = self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        return linear(hidden, weight, None, self.batch_invariant).float()


def allocate_kv_caches(
    config: ModelConfig,
    num_blocks: int,
    block_size: int,
    dtype: torch.dtype,
    device: torch.device | str,
) -> list[Tensor]:
    """One zeroed [2, num_blocks, block_size, KV, hd] tensor per layer."""
    shape = (2, num_blocks, block_size, config.num_kv_heads, config.head_dim)
    return [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_layers)]
