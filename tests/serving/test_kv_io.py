"""gather_kv / scatter_kv: a sequence's KV out of scattered paged blocks and back, exactly."""

from __future__ import annotations

import pytest
import torch

from lamina_engine.runner.kv_io import gather_kv, scatter_kv


def caches(num_layers=3, num_blocks=6, block_size=4, heads=2, dim=3) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    shape = (2, num_blocks, block_size, heads, dim)
    return [torch.randn(shape, generator=g) for _ in range(num_layers)]


def test_gather_reads_each_position_from_its_block():
    kv = caches()
    table = [4, 1, 5]  # positions 0-3 in block 4, 4-7 in block 1, 8-9 in block 5
    out = gather_kv(kv, table, 1, 3, 10)
    assert out.shape == (2, 2, 10, 6)
    for layer in (1, 2):
        for p in range(10):
            block, off = table[p // 4], p % 4
            want = kv[layer][:, block, off].reshape(2, 6)
            assert torch.equal(out[:, layer - 1, p], want)


def test_scatter_then_gather_round_trips_and_touches_nothing_else():
    src, dst = caches(), [torch.zeros_like(c) for c in caches()]
    payload = gather_kv(src, [0, 2, 3], 0, 3, 11)
    scatter_kv(dst, [5, 1, 4], 0, payload)
    assert torch.equal(gather_kv(dst, [5, 1, 4], 0, 3, 11), payload)
    assert dst[0][:, 0].abs().sum() == 0 and dst[0][:, 4, 3].abs().sum() == 0  # slot 11 unused
    # a later part: positions [8, 11) of layers [1, 3) only
    part = gather_kv(src, [0, 2, 3], 1, 3, 11, token_start=8)
    fresh = [torch.zeros_like(c) for c in dst]
    scatter_kv(fresh, [5, 1, 4], 1, part, token_start=8)
    assert fresh[0].abs().sum() == 0
    assert torch.equal(gather_kv(fresh, [5, 1, 4], 1, 3, 11, token_start=8), part)


def test_bad_shapes_are_refused():
    kv = caches()
    with pytest.raises(ValueError, match="not covered"):
        gather_kv(kv, [0], 0, 1, 5)
    with pytest.raises(ValueError, match="does not fit"):
        scatter_kv(kv, [0, 1], 0, torch.zeros(2, 1, 4, 7))
    with pytest.raises(ValueError, match="dtype"):
        scatter_kv(kv, [0, 1], 0, torch.zeros(2, 1, 4, 6, dtype=torch.float16))
