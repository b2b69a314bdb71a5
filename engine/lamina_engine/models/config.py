"""ModelConfig: the fields of an HF `config.json` that change the math, per family.

Each family's quirks follow the installed transformers implementation
(`transformers/models/<family>/modeling_<family>.py`):

- qwen3_moe: per-head q/k RMSNorm; router softmax -> top-k -> optional renorm
  (`norm_topk_prob`); dense layers chosen by `mlp_only_layers` and `decoder_sparse_step`.
- mixtral: no q/k norm, no attention bias; router softmax -> top-k -> always renorm (the same
  as top-k on the logits then softmax over the k).
- olmoe: q/k RMSNorm over the whole projection (q: H*hd, k: KV*hd); optional `clip_qkv` clamp;
  router like qwen3_moe.
- llama: dense; optional attention/MLP biases; rope scaling (linear, llama3).
- qwen3: dense; per-head q/k RMSNorm; head_dim defaults to 128 when absent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

SUPPORTED_MODEL_TYPES = ("qwen3_moe", "mixtral", "olmoe", "llama", "qwen3")
MOE_MODEL_TYPES = ("qwen3_moe", "mixtral", "olmoe")
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


class ConfigError(ValueError):
    """config.json describes a model this engine cannot run, or is missing a needed field."""


@dataclass(frozen=True)
class RopeConfig:
    """Rotary embedding: `theta` base; `rope_type` in SUPPORTED_ROPE_TYPES.

    linear: every inverse frequency is divided by `factor`.
    llama3: low frequencies divided by `factor`, high ones kept, the band between smoothed
    (needs `low_freq_factor`, `high_freq_factor`, `original_max_position_embeddings`).
    """

    theta: float
    rope_type: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclass(frozen=True)
class ModelConfig:
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int  # dense MLP width (also Mixtral/OLMoE expert width, see below)
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope: RopeConfig
    max_position_embeddings: int
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    # "none", "per_head" (qwen3, qwen3_moe: norm over head_dim) or "full" (olmoe: norm over
    # the whole q projection H*hd and k projection KV*hd).
    qk_norm: str = "none"
    clip_qkv: float | None = None
    # MoE; num_experts == 0 means a dense model.
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    norm_topk_prob: bool = False
    decoder_sparse_step: int = 1
    mlp_only_layers: tuple[int, ...] = ()
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = field(default_factory=tuple)

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def num_key_value_heads(self) -> int:  # HF's name for num_kv_heads
        return self.num_kv_heads

    def is_moe_layer(self, layer: int) -> bool:
        """Qwen3-MoE's rule, which also covers Mixtral/OLMoE (every layer is MoE there)."""
        if not self.is_moe or layer in self.mlp_only_layers:
            return False
        return (layer + 1) % self.decoder_sparse_step == 0

    @property
    def moe_layers(self) -> list[int]:
        return [i for i in range(self.num_layers) if self.is_moe_layer(i)]

    def expert_bytes(self, dtype: torch.dtype) -> int:
        """Bytes of one expert's weights (gate, up, down: 3 * D * I elements)."""
        itemsize = torch.empty((), dtype=dtype).element_size()
        return 3 * self.hidden_size * self.moe_intermediate_size * itemsize

    @classmethod
    def from_hf_dict(cls, cfg: dict[str, Any]) -> ModelConfig:
        """Parse an HF config.json dict; raises ConfigError naming the problem."""
        model_type = cfg.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ConfigError(
                f"model_type {model_type!r} is not supported; supported model types: "
                f"{', '.join(SUPPORTED_MODEL_TYPES)}"
            )

        def need(key: str) -> Any:
            if cfg.get(key) is None:
                raise ConfigError(f"config.json for {model_type} lacks required field {key!r}")
            return cfg[key]

        hidden, heads = int(need("hidden_size")), int(need("num_attention_heads"))
        kv_heads = int(cfg.get("num_key_value_heads") or heads)
        if heads % kv_heads:
            raise ConfigError(
                f"num_attention_heads={heads} is not a multiple of num_key_value_heads={kv_heads}"
            )
        act = cfg.get("hidden_act", "silu")
        if act != "silu":
            raise ConfigError(f"hidden_act {act!r} is not supported; only 'silu' is")
        _reject_sliding_window(cfg, model_type)

        head_dim = cfg.get("head_dim")
        if head_dim is None:
            # Qwen3 (dense) declares head_dim=128 as its class default; the others derive it.
            head_dim = 128 if model_type == "qwen3" else hidden // heads
        if model_type == "olmoe" and head_dim * heads != hidden:
            raise ConfigError(
                f"olmoe needs head_dim * num_attention_heads == hidden_size "
                f"({head_dim} * {heads} != {hidden}): its q/k norms span the whole projection"
            )

        moe: dict[str, Any] = {}
        if model_type in MOE_MODEL_TYPES:
            num_experts = cfg.get("num_experts") or cfg.get("num_local_experts")
            if not num_experts:
                raise ConfigError(f"config.json for {model_type} lacks num_experts")
            top_k = int(need("num_experts_per_tok"))
            if not 0 < top_k <= num_experts:
                raise ConfigError(
                    f"num_experts_per_tok={top_k} must be in [1, num_experts={num_experts}]"
                )
            moe = dict(
                num_experts=int(num_experts),
                num_experts_per_tok=top_k,
                # Mixtral and OLMoE experts use intermediate_size; Qwen3-MoE has its own width.
                moe_intermediate_size=int(
                    need("moe_intermediate_size")
                    if model_type == "qwen3_moe"
                    else need("intermediate_size")
                ),
                # Mixtral always renormalises the top-k probabilities.
                norm_topk_prob=True
                if model_type == "mixtral"
                else bool(cfg.get("norm_topk_prob", False)),
            )
            if model_type == "qwen3_moe":
                moe["decoder_sparse_step"] = int(cfg.get("decoder_sparse_step") or 1)
                moe["mlp_only_layers"] = tuple(int(i) for i in cfg.get("mlp_only_layers") or ())

        eos = cfg.get("eos_token_id")
        eos_ids = (
            ()
            if eos is None
            else tuple(int(e) for e in eos)
            if isinstance(eos, list)
            else (int(eos),)
        )
        return cls(
            model_type=model_type,
            vocab_size=int(need("vocab_size")),
            hidden_size=hidden,
            intermediate_size=int(need("intermediate_size")),
            num_layers=int(need("num_hidden_layers")),
            num_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=int(head_dim),
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            rope=_parse_rope(cfg),
            max_position_embeddings=int(cfg.get("max_position_embeddings") or 2048),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            attention_bias=model_type != "mixtral" and bool(cfg.get("attention_bias", False)),
            mlp_bias=model_type == "llama" and bool(cfg.get("mlp_bias", False)),
            qk_norm={"qwen3": "per_head", "qwen3_moe": "per_head", "olmoe": "full"}.get(
                model_type, "none"
            ),
            clip_qkv=float(cfg["clip_qkv"])
            if model_type == "olmoe" and cfg.get("clip_qkv") is not None
            else None,
            bos_token_id=cfg.get("bos_token_id"),
            eos_token_ids=eos_ids,
            **moe,
        )


def _reject_sliding_window(cfg: dict[str, Any], model_type: str) -> None:
    """HF applies a sliding-window mask only when these flags are set; the engine has none."""
    if model_type in ("qwen3", "qwen3_moe"):
        active = bool(cfg.get("use_sliding_window")) and cfg.get("sliding_window") is not None
    else:
        active = cfg.get("sliding_window") is not None
    if active:
        raise ConfigError(
            f"sliding-window attention (sliding_window={cfg.get('sliding_window')}) is not "
            "supported; set sliding_window to null (or use_sliding_window to false) if the "
            "model attends to its full context"
        )


def _parse_rope(cfg: dict[str, Any]) -> RopeConfig:
    """Reads transformers 5's `rope_parameters` or the older `rope_theta` + `rope_scaling`."""
    params = dict(cfg.get("rope_parameters") or {})
    if "rope_theta" not in params:
        params.update(cfg.get("rope_scaling") or {})
        params["rope_theta"] = cfg.get("rope_theta", 10000.0)
    rope_type = params.get("rope_type") or params.get("type") or "default"
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ConfigError(
            f"rope scaling type {rope_type!r} is not supported; supported: "
            f"{', '.join(SUPPORTED_ROPE_TYPES)} ('dynamic' is not: its frequencies depend on "
            "the longest sequence in each batch)"
        )
    if float(params.get("partial_rotary_factor", 1.0)) != 1.0:
        raise ConfigError("partial_rotary_factor != 1 is not supported")
    theta = float(params["rope_theta"])
    if rope_type == "default":
        return RopeConfig(theta=theta)
    factor = float(params.get("factor") or 0.0)
    if not factor > 0 or math.isinf(factor):
        raise ConfigError(f"rope scaling {rope_type!r} needs a positive 'factor', got {factor}")
    if rope_type == "linear":
        return RopeConfig(theta=theta, rope_type="linear", factor=factor)
    missing = [
        k
        for k in ("low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
        if params.get(k) is None
    ]
    if missing:
        raise ConfigError(f"rope scaling 'llama3' lacks {', '.join(missing)}")
    return RopeConfig(
        theta=theta,
        rope_type="llama3",
        factor=factor,
        low_freq_factor=float(params["low_freq_factor"]),
        high_freq_factor=float(params["high_freq_factor"]),
        original_max_position_embeddings=int(params["original_max_position_embeddings"]),
    )
