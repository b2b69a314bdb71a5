"""CPU kernels of the torch path: matmuls by row count, and decode attention.

Matmuls: F.linear vs torch.mm(w, x^T) vs oneDNN's linear vs Lamina's grouped_gemv
(kernels/cpu_ops.py: all `count` weights in one call, m rows each, as a MoE layer runs its
experts) vs what `linear` picks (grouped_gemv for M <= cpu_ops.MAX_ROWS, 32, where it builds).

    .venv/bin/python scripts/bench_cpu_kernels.py [--threads 1]

The table behind `lamina_engine.models.layers.linear`'s kernel choice. Each cell is the best of
5 passes over `count` distinct weights of one shape (more bytes than the caches hold, so every
pass streams the weights from memory, as a decode step does), in GB/s of weight read; the
shapes are the vs-hf benchmark model's (engine/lamina_engine/bench/random_models.py): an expert's gate+up
[512, 512] and down [512, 256] projections, and the LM head [16000, 512].

Decode attention: one layer of 16 decodes with seeded context lengths 32-768 over a paged cache
(block 16, 4 kv heads, 8 heads, head_dim 64, shuffled blocks), as `paged_attention` runs it
with Lamina's CPU kernel (K/V read in place), with the torch path it replaced (unpadded gather,
per-sequence bmm), and as one padded SDPA call over every sequence's blocks gathered to the
longest context (the torch path before that).
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

SHAPES = [
    ("expert gate+up", 512, 512, 192),
    ("expert down", 512, 256, 384),
    ("lm head", 16000, 512, 6),
]
ROWS = [1, 2, 3, 4, 6, 8, 12, 16, 32, 64, 256]


def best_seconds(fn, passes: int = 5) -> float:
    fn()
    best = float("inf")
    for _ in range(passes):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    onednn = torch.ops.mkldnn._linear_pointwise
    print(f"torch {torch.__version__}, {args.threads} thread(s); GB/s of weight streamed")
    print(
        "| weight | rows | F.linear | mm(w, x^T) | oneDNN linear | grouped_gemv | lamina linear |"
    )
    print("|---|---|---|---|---|---|---|")
    from lamina_engine.kernels.cpu_ops import native_ops
    from lamina_engine.models.layers import linear

    ops = native_ops()

    for name, n, k, count in SHAPES:
        weights = torch.randn(count, n, k)
        gb = weights.numel() * 4 / 1e9
        for m in ROWS:
            x = torch.randn(m, k)
            kernels = [
                lambda x=x, ws=weights: [F.linear(x, w) for w in ws],
                lambda x=x, ws=weights: [torch.mm(w, x.t()) for w in ws],
                lambda x=x, ws=weights: [onednn(x, w, None, "none", [], "") for w in ws],
                None,
                lambda x=x, ws=weights: [linear(x, w) for w in ws],
            ]
            if ops is not None:  # the same rows for every weight, in one call
                rows, offsets = x.repeat(count, 1), list(range(0, count * m + 1, m))
                kernels[3] = lambda r=rows, o=offsets, ws=weights: ops.grouped_gemv(r, ws, o)
            cells = " | ".join(
                "n/a" if fn is None else f"{gb / best_seconds(fn):.1f}" for fn in kernels
            )
            print(f"| {name} [{n}, {k}] | {m} | {cells} |")
    decode_attention()


def decode_attention() -> None:
    import random

    from lamina_engine.models import AttentionMetadata, attention
    from lamina_engine.models.attention import paged_attention

    bs, kv_heads, heads, hd = 16, 4, 8, 64
    rng = random.Random(0)
    contexts = [rng.randint(32, 768) for _ in range(16)]
    num_blocks = sum(-(-c // bs) for c in contexts) * 2
    cache = torch.randn(2, num_blocks, bs, kv_heads, hd)
    free = list(range(num_blocks))
    rng.shuffle(free)
    tables = [[free.pop() for _ in range(-(-c // bs))] for c in contexts]
    md = AttentionMetadata.build([c - 1 for c in contexts], [1] * len(contexts), tables, bs)
    q = torch.randn(len(contexts), heads, hd)
    plan = md.plan
    widest = max(len(t) for t in tables)
    padded = torch.tensor([t + [0] * (widest - len(t)) for t in tables])  # [B, nb]
    mask = (torch.arange(widest * bs)[None, :] < torch.tensor(contexts)[:, None])[:, None, None]

    def padded_sdpa():
        k = cache[0][padded].flatten(1, 2).transpose(1, 2)  # [B, KV, nb * BS, hd]
        v = cache[1][padded].flatten(1, 2).transpose(1, 2)
        qd = q.view(len(contexts), kv_heads, heads // kv_heads, hd)
        return F.scaled_dot_product_attention(qd, k, v, attn_mask=mask).reshape(q.shape)

    def torch_path():
        native, attention._native_decode = attention._native_decode, lambda q, kv: None
        try:
            return paged_attention(q, cache, plan)
        finally:
            attention._native_decode = native

    torch.testing.assert_close(paged_attention(q, cache, plan), padded_sdpa())
    torch.testing.assert_close(torch_path(), padded_sdpa())
    padded_ms = best_seconds(padded_sdpa, 20) * 1e3
    torch_ms = best_seconds(torch_path, 20) * 1e3
    paged_ms = best_seconds(lambda: paged_attention(q, cache, plan), 20) * 1e3
    print(f"\ndecode attention, 16 sequences, {sum(contexts)} keys (longest {max(contexts)}):")
    print(
        f"padded SDPA {padded_ms:.2f} ms/layer, paged_attention: torch path {torch_ms:.2f}, "
        f"as it runs here (Lamina's CPU kernel where it builds) {paged_ms:.2f} ms/layer"
    )


if __name__ == "__main__":
    main()
