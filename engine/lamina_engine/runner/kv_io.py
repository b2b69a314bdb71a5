"""Move one sequence's KV between the paged cache and the wire layout, for disaggregated serving.

Cache layout per layer: [2, num_blocks, block_size, Hkv, D] (2 = K then V).
Wire layout (transfer/wire.py): [2, L, T, Hkv*D] for L layers of a group and T token positions.
Token position p of a sequence lives in slot `block_table[p // block_size] * block_size +
p % block_size`; both directions go through that slot index, so the blocks a sequence holds
need not be contiguous.
"""

from __future__ import annotations

import torch


def token_slots(
    block_table: list[int], start: int, end: int, block_size: int, device: torch.device | str
) -> torch.Tensor:
    """[end - start] int64 cache slots of positions [start, end) of a sequence."""
    if not 0 <= start <= end <= len(block_table) * block_size:
        raise ValueError(
            f"positions [{start}, {end}) are not covered by a block table of "
            f"{len(block_table)} blocks of {block_size} tokens"
        )
    pos = torch.arange(start, end, dtype=torch.long)
    table = torch.tensor(block_table, dtype=torch.long)
    slots = table[pos // block_size] * block_size + pos % block_size
    return slots.to(device)


def _flat(cache: torch.Tensor) -> torch.Tensor:
    """[2, num_blocks, block_size, Hkv, D] -> [2, num_blocks*block_size, Hkv*D] (a view)."""
    two, nb, bs, h, d = cache.shape
    return cache.view(two, nb * bs, h * d)


def gather_kv(
    kv_caches: list[torch.Tensor],
    block_table: list[int],
    layer_start: int,
    layer_end: int,
    num_tokens: int,
    token_start: int = 0,
) -> torch.Tensor:
    """KV of positions [token_start, num_tokens) for layers [layer_start, layer_end) as a new
    [2, L, T, Hkv*D] tensor on the cache's device (a copy: the blocks may be freed afterwards)."""
    if not 0 <= layer_start < layer_end <= len(kv_caches):
        raise ValueError(f"layer range [{layer_start}, {layer_end}) outside {len(kv_caches)}")
    block_size = kv_caches[0].shape[2]
    slots = token_slots(block_table, token_start, num_tokens, block_size, kv_caches[0].device)
    layers = [_flat(kv_caches[i]).index_select(1, slots) for i in range(layer_start, layer_end)]
    return torch.stack(layers, dim=1)


def scatter_kv(
    kv_caches: list[torch.Tensor],
    block_table: list[int],
    layer_start: int,
    kv: torch.Tensor,
    token_start: int = 0,
) -> None:
    """Write `kv` [2, L, T, Hkv*D] (any device, the cache's dtype) into the slots of positions
    [token_start, token_start + T) of layers [layer_start, layer_start + L)."""
    two, num_layers, num_tokens, width = kv.shape
    cache0 = kv_caches[0]
    expected = cache0.shape[3] * cache0.shape[4]
    if two != 2 or width != expected:
        raise ValueError(f"KV of shape {tuple(kv.shape)} does not fit [2, L, T, {expected}]")
    if layer_start < 0 or layer_start + num_layers > len(kv_caches):
        raise ValueError(
            f"layers [{layer_start}, {layer_start + num_layers}) outside {len(kv_caches)}"
        )
    if kv.dtype != cache0.dtype:
        raise ValueError(f"KV dtype {kv.dtype} differs from the cache's {cache0.dtype}")
    slots = token_slots(
        block_table, token_start, token_start + num_tokens, cache0.shape[2], cache0.device
    )
    src = kv.to(cache0.device)
    for i in range(num_layers):
        _flat(kv_caches[layer_start + i]).index_copy_(1, slots, src[:, i])
