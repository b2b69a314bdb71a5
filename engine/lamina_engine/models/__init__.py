"""The model layer: HF-format decoder LMs (Qwen3-MoE, Mixtral, OLMoE, Llama, Qwen3) in plain torch."""

from lamina_engine.models.attention import AttentionMetadata
from lamina_engine.models.checkpoint import CheckpointError, load_checkpoint, read_config
from lamina_engine.models.config import ConfigError, ModelConfig
from lamina_engine.models.decoder import CausalLM, allocate_kv_caches
from lamina_engine.models.moe import ExpertStats

__all__ = [
    "AttentionMetadata",
    "CausalLM",
    "CheckpointError",
    "ConfigError",
    "ExpertStats",
    "ModelConfig",
    "allocate_kv_caches",
    "load_checkpoint",
    "read_config",
]
