"""K/V of one step into the paged cache by slot mapping, in Triton; the torch reference is
models.attention.write_kv_cache.

Shapes: T tokens, KV kv heads, hd head_dim; cache of one layer [2, NB, BS, KV, hd] with slot
s = block * BS + offset. One program per token copies its K and V rows ([KV * hd] each); a
negative slot (a padded token) is skipped.
"""

from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor


@triton.jit
def _store_kv(
    k_ptr,  # [T, KV*hd] rows (stride_k apart)
    v_ptr,
    cache_k_ptr,  # [NB*BS, KV*hd] contiguous rows
    cache_v_ptr,
    slots_ptr,  # [T]
    width,  # KV * hd
    stride_k,
    stride_v,
    BLOCK: tl.constexpr,
):
    t = tl.program_id(0)
    slot = tl.load(slots_ptr + t).to(tl.int64)
    if slot < 0:
        return
    offs = tl.arange(0, BLOCK)
    for c0 in range(0, width, BLOCK):
        ok = c0 + offs < width
        k = tl.load(k_ptr + t * stride_k + c0 + offs, mask=ok)
        v = tl.load(v_ptr + t * stride_v + c0 + offs, mask=ok)
        dst_k = cache_k_ptr + slot * width + c0 + offs
        tl.store(dst_k, k.to(cache_k_ptr.dtype.element_ty), mask=ok)
        dst_v = cache_v_ptr + slot * width + c0 + offs
        tl.store(dst_v, v.to(cache_v_ptr.dtype.element_ty), mask=ok)


def store_kv(kv_cache: Tensor, slot_mapping: Tensor, k: Tensor, v: Tensor) -> None:
    """Stores k, v [T, KV, hd] into kv_cache [2, NB, BS, KV, hd] at slot_mapping [T]."""
    num_tokens = slot_mapping.numel()
    if num_tokens == 0:
        return
    if not kv_cache.is_contiguous():
        raise ValueError("store_kv needs a contiguous KV cache [2, NB, BS, KV, hd]")
    k2, v2 = k.reshape(num_tokens, -1), v.reshape(num_tokens, -1)  # [T, KV*hd]
    if k2.stride(-1) != 1 or v2.stride(-1) != 1:
        k2, v2 = k2.contiguous(), v2.contiguous()
    width = k2.shape[1]
    block = min(triton.next_power_of_2(width), 1024)
    _store_kv[(num_tokens,)](
        k2, v2, kv_cache[0], kv_cache[1], slot_mapping, width, k2.stride(0), v2.stride(0),
        BLOCK=block, num_warps=4 if block >= 512 else 1,
    )  # fmt: skip
