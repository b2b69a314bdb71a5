"""Lamina's CPU kernels (kernels/cpu_ops.py): grouped_gemv against its torch reference and the
MoE layer with it against the layer's torch loop; decode_attention's independence from the rest
of the batch and its refusals (its agreement with dense attention: tests/engine/test_cpu_kernels.py).

On an x86-64 CPU with AVX-512F or AVX2 + FMA the kernel must build (a C++ compiler is part of
`make install`'s machine); only other CPUs skip, and they run the torch loop in the engine.
On an AVX-512 host, `LAMINA_CPU_ISA=avx2 pytest tests/engine/kernels/test_cpu_ops.py` runs the
same tests against the AVX2 build.
"""

from __future__ import annotations

import pytest
import torch

from lamina_engine.kernels import cpu_ops
from lamina_engine.models import moe


@pytest.fixture(scope="module")
def ops():
    if cpu_ops.cpu_isa() is None:
        pytest.skip("this CPU has neither AVX-512F nor AVX2+FMA: the engine runs its torch loop")
    built = cpu_ops.native_ops()
    assert built is not None, "the CPU MoE kernel did not build (see the warning logged above)"
    return built


def test_lamina_cpu_isa_picks_a_build_or_says_what_is_wrong(monkeypatch):
    monkeypatch.setenv("LAMINA_CPU_ISA", "off")
    assert cpu_ops.cpu_isa() is None
    monkeypatch.setenv("LAMINA_CPU_ISA", "avx3")
    with pytest.raises(ValueError, match="expected one of avx512f, avx2 or off"):
        cpu_ops.cpu_isa()
    monkeypatch.delenv("LAMINA_CPU_ISA")
    best = cpu_ops.cpu_isa()
    if best is not None:  # an x86-64 host with AVX-512F or AVX2: it may ask for what it has
        monkeypatch.setenv("LAMINA_CPU_ISA", best.upper())
        assert cpu_ops.cpu_isa() == best


def offsets_of(sizes: list[int]) -> list[int]:
    out = [0]
    for n in sizes:
        out.append(out[-1] + n)
    return out


# K: below one vector, vector-aligned, odd tails, and a real width. N: not a multiple of the
# 64-row work item. Group sizes: empty experts, single rows, exactly one tile, more than a tile.
@pytest.mark.parametrize("k", [1, 7, 8, 16, 40, 100, 512])
@pytest.mark.parametrize("n", [1, 63, 130])
def test_matches_the_reference(ops, k, n):
    g = torch.Generator().manual_seed(k * 1000 + n)
    sizes = [0, 1, 3, 0, 8, 13, 2]
    x = torch.randn(sum(sizes), k, generator=g)
    w = torch.randn(len(sizes), n, k, generator=g)
    offsets = offsets_of(sizes)
    got = ops.grouped_gemv(x, w, offsets)
    want = cpu_ops.grouped_gemv_reference(x.double(), w.double(), offsets).float()
    assert got.shape == (x.shape[0], n)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * k**0.5)


@pytest.mark.parametrize("threads", [1, 2])
def test_a_rows_result_does_not_depend_on_its_group(ops, threads):
    """Bitwise: the same row alone, at every position of a full tile and in a group of 13."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        g = torch.Generator().manual_seed(1)
        w = torch.randn(3, 200, 300, generator=g)
        row = torch.randn(1, 300, generator=g)
        alone = ops.grouped_gemv(row, w, [0, 0, 1, 1])
        for size in (2, ops.tile_rows, 13):
            for at in range(size):
                rows = torch.randn(size, 300, generator=g)
                rows[at] = row[0]
                got = ops.grouped_gemv(rows, w, [0, 0, size, size])
                assert torch.equal(got[at], alone[0]), (size, at)
    finally:
        torch.set_num_threads(previous)


def test_no_rows(ops):
    out = ops.grouped_gemv(torch.empty(0, 16), torch.randn(4, 8, 16), [0, 0, 0, 0, 0])
    assert out.shape == (0, 8)


@pytest.mark.parametrize(
    ("x", "w", "offsets", "message"),
    [
        (torch.randn(3, 16), torch.randn(2, 8, 16), [0, 3], "offsets must be"),
        (torch.randn(3, 16), torch.randn(2, 8, 16), [1, 2, 3], "offsets must be"),
        (torch.randn(3, 16), torch.randn(2, 8, 16), [0, 2, 2], "offsets must be"),
        (torch.randn(3, 16), torch.randn(3, 8, 16), [0, 2, 1, 3], "must not decrease"),
        (torch.randn(3, 16), torch.randn(2, 8, 12), [0, 1, 3], "K differs"),
        (torch.randn(3, 16).double(), torch.randn(2, 8, 16), [0, 1, 3], "fp32 only"),
        (torch.randn(16, 3).t(), torch.randn(2, 8, 16), [0, 1, 3], "contiguous"),
    ],
)
def test_refuses_bad_operands_with_a_message(ops, x, w, offsets, message):
    with pytest.raises(RuntimeError, match=message):
        ops.grouped_gemv(x, w, offsets)


def test_can_run_only_takes_contiguous_fp32_cpu_tensors():
    x = torch.randn(4, 8)
    assert cpu_ops.can_run(x, torch.randn(2, 6, 8))
    assert not cpu_ops.can_run(x.bfloat16(), torch.randn(2, 6, 8))
    assert not cpu_ops.can_run(x, torch.randn(2, 8, 6).transpose(1, 2))


def _moe_case(tokens: int, seed: int, ids: torch.Tensor | None = None):
    g = torch.Generator().manual_seed(seed)
    num_experts, top_k, hidden, inter = 6, 3, 40, 24
    x = torch.randn(tokens, hidden, generator=g)
    logits = torch.randn(tokens, num_experts, generator=g)
    weights, routed = logits.softmax(-1).topk(top_k, dim=-1)
    w13 = torch.randn(num_experts, 2 * inter, hidden, generator=g) / hidden**0.5
    w2 = torch.randn(num_experts, hidden, inter, generator=g) / inter**0.5
    return x, weights, routed if ids is None else ids, w13, w2


@pytest.mark.parametrize("tokens", [1, 5, 16, 64])
def test_experts_forward_with_the_kernel_matches_the_torch_loop(ops, monkeypatch, tokens):
    """The MoE layer's result is the same (to fp32 rounding) with the kernel and without it;
    64 tokens over 6 experts give every expert more than MAX_ROWS rows: the torch loop."""
    x, weights, ids, w13, w2 = _moe_case(tokens, seed=tokens)
    calls = []
    monkeypatch.setattr(ops, "grouped_gemv", _counting(ops.grouped_gemv, calls), raising=False)
    monkeypatch.setattr(moe, "native_ops", lambda: ops)
    fast, counts = moe.experts_forward(x, weights, ids, w13, w2)
    monkeypatch.setattr(moe, "native_ops", lambda: None)
    loop, counts_loop = moe.experts_forward(x, weights, ids, w13, w2)
    torch.testing.assert_close(fast, loop, rtol=1e-5, atol=1e-5)
    assert torch.equal(counts, counts_loop)
    assert bool(calls) == bool(((counts > 0) & (counts <= cpu_ops.MAX_ROWS)).any())


def test_experts_forward_splits_a_layer_between_the_kernel_and_the_loop(ops, monkeypatch):
    """Expert 0 gets a prefill's 30 rows (the oneDNN loop), experts 1-5 a decode's few (one
    kernel call per GEMM); the rows come back in token order either way."""
    ids = torch.stack([torch.zeros(30, dtype=torch.long), torch.arange(30) % 5 + 1], dim=1)
    ids = torch.cat([ids, ids[:, 1:] % 5 + 1], dim=1)  # [30, 3]: expert 0 in every token
    x, weights, _, w13, w2 = _moe_case(30, seed=3)
    calls = []
    monkeypatch.setattr(ops, "grouped_gemv", _counting(ops.grouped_gemv, calls), raising=False)
    monkeypatch.setattr(moe, "native_ops", lambda: ops)
    mixed, counts = moe.experts_forward(x, weights, ids, w13, w2)
    assert counts[0] == 30 and 0 < counts[1:].max() <= cpu_ops.MAX_ROWS and len(calls) == 2
    monkeypatch.setattr(moe, "native_ops", lambda: None)
    loop, _ = moe.experts_forward(x, weights, ids, w13, w2)
    torch.testing.assert_close(mixed, loop, rtol=1e-5, atol=1e-5)


def test_invariant_experts_give_a_token_the_same_bits_in_any_batch(ops, monkeypatch):
    """batch_invariant: every expert runs on the kernel, whose rows ignore the call's other
    rows, so a token's output is bitwise the same alone and inside a 64-token prefill."""
    x, weights, ids, w13, w2 = _moe_case(64, seed=5)
    monkeypatch.setattr(moe, "native_ops", lambda: ops)
    whole, _ = moe.experts_forward(x, weights, ids, w13, w2, invariant=True)
    for t in (0, 17, 63):
        alone, _ = moe.experts_forward(
            x[t : t + 1], weights[t : t + 1], ids[t : t + 1], w13, w2, invariant=True
        )
        assert torch.equal(alone[0], whole[t]), t


def _counting(fn, calls):
    def wrapped(*args):
        calls.append(1)
        return fn(*args)

    return wrapped


def _paged(seqs: list[int], heads=8, kv_heads=2, hd=24, bs=4, seed=0):
    """A shuffled paged cache holding `seqs` contexts: (q, cache, blocks, starts)."""
    g = torch.Generator().manual_seed(seed)
    nbs = [-(-c // bs) for c in seqs]
    cache = torch.randn(2, sum(nbs) + 3, bs, kv_heads, hd, generator=g)
    blocks = torch.randperm(sum(nbs) + 3, generator=g)[: sum(nbs)]
    starts = offsets_of(nbs)[:-1]
    return torch.randn(len(seqs), heads, hd, generator=g), cache, blocks, starts


def test_decode_attention_gives_a_sequence_the_same_bits_in_any_batch(ops):
    q, cache, blocks, starts = _paged([5, 33, 1, 17])
    together = ops.decode_attention(q, cache, blocks, starts, [5, 33, 1, 17], 0.2)
    for i, context in enumerate([5, 33, 1, 17]):
        alone = ops.decode_attention(q[i : i + 1], cache, blocks, [starts[i]], [context], 0.2)
        assert torch.equal(alone[0], together[i]), i


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(contexts=[5, 0]), "has context 0"),
        (dict(contexts=[5, 99]), "run past the block list"),
        (dict(starts=[0]), "one block start and one context per query row"),
        (dict(blocks=torch.tensor([0, 1, 999, 2, 3])), "outside the cache"),
        (dict(blocks=torch.tensor([0, 1, 2, 3, 4], dtype=torch.int32)), "int64"),
        (dict(q=torch.randn(2, 7, 24)), "multiple of the kv heads"),
        (dict(q=torch.randn(2, 8, 24).double()), "fp32 only"),
    ],
)
def test_decode_attention_refuses_bad_operands_with_a_message(ops, change, message):
    q, cache, blocks, starts = _paged([5, 9])
    args = dict(q=q, cache=cache, blocks=blocks, starts=starts, contexts=[5, 9]) | change
    with pytest.raises(RuntimeError, match=message):
        ops.decode_attention(
            args["q"], args["cache"], args["blocks"], args["starts"], args["contexts"], 0.2
        )


def _torch_rms_norm(x, w, eps):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


@pytest.mark.parametrize("dim", [7, 16, 64, 100])
def test_rms_norm_matches_torch_on_rows_and_strided_heads(ops, dim):
    g = torch.Generator().manual_seed(dim)
    w = torch.randn(dim, generator=g)
    x = torch.randn(5, dim, generator=g)
    torch.testing.assert_close(ops.rms_norm(x, w, 1e-6), _torch_rms_norm(x, w, 1e-6))
    # the q slice of a fused qkv projection, viewed [T, H, hd]: strided rows
    qkv = torch.randn(5, 6 * dim, generator=g)
    q = qkv[:, : 4 * dim].view(5, 4, dim)
    got = ops.rms_norm(q, w, 1e-6)
    assert got.is_contiguous()
    torch.testing.assert_close(got, _torch_rms_norm(q, w, 1e-6))
    residual = torch.randn(5, dim, generator=g)
    out, total = ops.add_rms_norm(x, residual, w, 1e-6)
    assert torch.equal(total, x + residual)
    torch.testing.assert_close(out, _torch_rms_norm(x + residual, w, 1e-6))


@pytest.mark.parametrize(
    ("x", "w", "message"),
    [
        (torch.randn(4, 8), torch.randn(7), "weight must be"),
        (torch.randn(8, 4).t(), torch.randn(8), "unit stride"),
        (torch.randn(4, 8).double(), torch.randn(8), "fp32 only"),
        (torch.randn(2, 2, 2, 8), torch.randn(8), r"\[T, D\] or \[T, H, D\]"),
    ],
)
def test_rms_norm_refuses_bad_operands_with_a_message(ops, x, w, message):
    with pytest.raises(RuntimeError, match=message):
        ops.rms_norm(x, w, 1e-6)


def test_rms_norm_module_matches_its_torch_path(ops, monkeypatch):
    """RMSNorm (and its residual add) through the kernel and through the torch ops it replaced,
    which run where the kernels do not build."""
    from lamina_engine.models import layers

    g = torch.Generator().manual_seed(3)
    norm = layers.RMSNorm(48, 1e-6)
    norm.weight.data = torch.randn(48, generator=g)
    x, residual = torch.randn(6, 48, generator=g), torch.randn(6, 48, generator=g)
    heads = torch.randn(6, 3 * 48, generator=g)[:, :96].view(6, 2, 48)
    with torch.no_grad():
        fast = norm.forward_with_residual(x, residual), norm(heads)
        monkeypatch.setattr(layers, "native_ops", lambda: None)
        slow = norm.forward_with_residual(x, residual), norm(heads)
    torch.testing.assert_close(fast, slow)
