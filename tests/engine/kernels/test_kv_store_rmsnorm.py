"""KV-cache store and fused residual + RMSNorm (Triton) against their torch references."""

from __future__ import annotations

import pytest
import torch

from lamina_engine.kernels.kv_store import store_kv
from lamina_engine.kernels.rmsnorm import rmsnorm_residual
from lamina_engine.models.attention import write_kv_cache
from lamina_engine.models.layers import RMSNorm

from .conftest import TOLERANCE


@pytest.mark.parametrize("tokens,kv_heads,hd,block_size", [(1, 1, 16, 4), (13, 2, 24, 5)])
def test_store_kv_matches_write_kv_cache(device_dtype, tokens, kv_heads, hd, block_size):
    device, dtype = device_dtype
    gen = torch.Generator().manual_seed(0)
    num_blocks = 7
    slots = torch.randperm(num_blocks * block_size, generator=gen)[:tokens].to(device)
    k = torch.randn(tokens, kv_heads, hd, generator=gen).to(device, dtype)
    v = torch.randn(tokens, kv_heads, hd, generator=gen).to(device, dtype)
    base = torch.randn(2, num_blocks, block_size, kv_heads, hd, generator=gen).to(device, dtype)
    ref, out = base.clone(), base.clone()
    write_kv_cache(ref, slots, k, v)
    store_kv(out, slots, k, v)
    assert torch.equal(out, ref)  # a copy: bit-exact


def test_store_kv_from_strided_qkv_split(device_dtype):
    """k and v as the attention layer has them: views into one fused qkv projection."""
    device, dtype = device_dtype
    qkv = torch.randn(6, (4 + 2 * 2) * 8).to(device, dtype)
    _, k, v = qkv.split([32, 16, 16], dim=-1)
    k, v = k.view(6, 2, 8), v.view(6, 2, 8)
    slots = torch.tensor([3, 0, 9, 4, 11, 2], device=device)
    ref = torch.zeros(2, 3, 4, 2, 8, device=device, dtype=dtype)
    out = ref.clone()
    write_kv_cache(ref, slots, k, v)
    store_kv(out, slots, k, v)
    assert torch.equal(out, ref)


@pytest.mark.parametrize("rows,dim", [(1, 48), (9, 100), (4, 2048)])
@pytest.mark.parametrize("with_residual", [True, False])
def test_rmsnorm_residual_matches_torch(device_dtype, rows, dim, with_residual):
    device, dtype = device_dtype
    gen = torch.Generator().manual_seed(1)
    norm = RMSNorm(dim, 1e-6)
    norm.weight.data = 1 + 0.1 * torch.randn(dim, generator=gen)
    norm = norm.to(device, dtype)
    x = torch.randn(rows, dim, generator=gen).to(device, dtype)
    res = torch.randn(rows, dim, generator=gen).to(device, dtype) if with_residual else None
    ref_y, ref_r = norm.forward_with_residual(x, res)
    y, r = rmsnorm_residual(x, res, norm.weight, norm.eps)
    torch.testing.assert_close(r, ref_r, atol=0, rtol=0)
    torch.testing.assert_close(y, ref_y, **TOLERANCE[dtype])
