"""The paged KV cache's tensors: allocation (one pool, or SPEED's two) and byte accounting.

Per layer [2, NB, BS, KV, hd] (2 = K then V): NB blocks of BS token slots. With SPEED, layers
below the cutoff K hold NB lower-pool blocks and layers [K, L) the upper pool's smaller count
(core/speed_layout.py), so SPEED never takes more memory than full depth.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lamina_engine.core.block_manager import BlockManager
from lamina_engine.core.speed_block_manager import SpeedBlockManager
from lamina_engine.core.speed_layout import SpeedLayout
from lamina_engine.models import CausalLM, ModelConfig, allocate_kv_caches


def kv_bytes_per_block(model: CausalLM, block_size: int, dtype: torch.dtype) -> int:
    """Bytes of one block across every layer at full depth (what sizes the pool)."""
    c = model.config
    itemsize = torch.empty((), dtype=dtype).element_size()
    return 2 * c.num_layers * block_size * c.num_key_value_heads * c.head_dim * itemsize


def allocate_kv_pools(
    config: ModelConfig,
    num_blocks: int,
    block_size: int,
    dtype: torch.dtype,
    device: torch.device | str,
    speed: SpeedLayout | None = None,
) -> list[Tensor]:
    """Per layer a zeroed [2, NB, BS, KV, hd]: NB = num_blocks, except SPEED's upper layers
    [K, L), which get the upper pool's count."""
    if speed is None:
        return allocate_kv_caches(config, num_blocks, block_size, dtype, device)
    upper = speed.num_upper_blocks(num_blocks)
    caches = []
    for layer in range(config.num_layers):
        nb = num_blocks if layer < speed.prefill_layers else upper
        shape = (2, nb, block_size, config.num_kv_heads, config.head_dim)
        caches.append(torch.zeros(shape, dtype=dtype, device=device))
    return caches


def kv_bytes_held(blocks: BlockManager, kv_caches: list[Tensor]) -> int:
    """KV bytes in blocks owned by sequences, over every layer's pool (lower and upper)."""
    speed = isinstance(blocks, SpeedBlockManager) and blocks.upper is not None
    total = 0
    for layer, cache in enumerate(kv_caches):
        per_block = cache[:, 0].numel() * cache.element_size()  # K and V of one block
        upper = speed and layer >= blocks.layout.prefill_layers
        total += (blocks.upper if upper else blocks).num_used_blocks * per_block
    return total
