"""Skewed expert routing for random-weight benchmark models, calibrated to a trained router.

A random router spreads tokens evenly: with E experts and top-k, a batch of n tokens touches
1 - (1 - k/E)^n of the experts (87% at n = 32 for 1/16 of the experts per token). Trained
routers are skewed. The target curve, for Qwen3-30B-A3B (128 experts, top-8), is from the
Layered Prefill paper (arXiv 2510.08055, section on its cost model): a decode batch of 32
tokens touches about 55% of the experts, 128 tokens about 86% (COVERAGE_TARGET).

How the skew is made: expert e of layer l gets a router-logit bias b_e = -s * sigma_l * ln(r_e),
r_e its popularity rank (a seeded permutation per layer, so each layer favours other experts)
and sigma_l the std of that layer's random router logits. Expert popularity then falls off as
a power of the rank (Zipf-like). For independent Gaussian logits s = 0.7 would give 55% / 86%
(Monte Carlo, 1/16 of the experts per token); the random model's tokens route less
independently (its uniform router covers 84% at 32 tokens, not 87%), so s was fitted on the
model itself with `routing_coverage`: s = 0.5 measures 57% / 83% on moe-bench-skewed (0.55:
55% / 80%), tests/engine/test_bench_routing.py checks it stays within 5 points of the curve.

Qwen3-MoE's router has no bias, so the bias rides on a constant hidden channel (a "massive
activation", as trained LLMs have): the last hidden dimension j of every token embedding is
set to a constant c, and no layer writes into it (o_proj row j and every expert's down_proj
row j are zero), so the residual stream carries c at every layer and the router's column j
turns it into a per-expert bias (divided by the mean of the normalised channel, which varies
by a few percent across tokens with the residual's RMS).
"""

from __future__ import annotations

import torch

# Layered Prefill (arXiv 2510.08055), Qwen3-30B-A3B: decode batch size -> experts touched.
COVERAGE_TARGET = {32: 0.55, 128: 0.86}

SKEW_EXPONENT = 0.5  # s above, fitted on moe-bench-skewed's measured coverage


def _router_inputs(model, tokens: torch.Tensor) -> list[torch.Tensor]:
    """The normalised hidden states [N, D] every MoE router sees, one per layer (fp32)."""
    inputs: list[torch.Tensor] = []
    hooks = [
        layer.mlp.gate.register_forward_hook(
            lambda _m, args, _out: inputs.append(args[0].reshape(-1, args[0].shape[-1]).float())
        )
        for layer in model.model.layers
    ]
    try:
        with torch.inference_mode():
            model(input_ids=tokens)
    finally:
        for h in hooks:
            h.remove()
    return inputs


def calibration_tokens(vocab: int, seed: int, sequences: int = 16, length: int = 64):
    """Random prompts [sequences, length] (token ids 1..vocab-1), seeded."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(1, vocab, (sequences, length), generator=gen)


@torch.no_grad()
def skew_routing(model, seed: int, exponent: float = SKEW_EXPONENT) -> None:
    """Gives every router of an HF Qwen3-MoE model (in place) the Zipf-like bias above."""
    cfg = model.config
    j = cfg.hidden_size - 1
    embed = model.model.embed_tokens.weight  # [V, D]
    embed[:, j] = 4.0 * embed.std()  # a few times a typical entry: RMS barely moves
    for layer in model.model.layers:
        layer.self_attn.o_proj.weight[j, :] = 0
        layer.mlp.experts.down_proj[:, j, :] = 0  # [E, D, I]
        layer.mlp.gate.weight[:, j] = 0  # [E, D]: the bias column, set below
    gen = torch.Generator().manual_seed(seed + 1)
    ranks = torch.arange(1, cfg.num_experts + 1, dtype=torch.float32)

    # One forward: each router is biased from its own input just before it runs, so every
    # later layer sees the routing (and so the inputs) of the biased layers before it.
    def bias_router(gate, args) -> None:
        x = args[0].reshape(-1, args[0].shape[-1]).float()  # [N, D]
        sigma = float((x @ gate.weight.float().t()).std())  # column j is still zero here
        rank = ranks[torch.randperm(cfg.num_experts, generator=gen)]  # [E], expert -> rank
        bias = -exponent * sigma * torch.log(rank) / float(x[:, j].mean())
        gate.weight[:, j] = bias.to(gate.weight.dtype)

    hooks = [layer.mlp.gate.register_forward_pre_hook(bias_router) for layer in model.model.layers]
    try:
        model(input_ids=calibration_tokens(cfg.vocab_size, seed))
    finally:
        for h in hooks:
            h.remove()


@torch.no_grad()
def routing_coverage(model, batch_sizes, seed: int, samples: int = 200) -> dict[int, float]:
    """Mean fraction of a layer's experts that a batch of n tokens touches, for each n in
    batch_sizes: n tokens drawn at random (without replacement) from seeded random prompts, as
    a decode batch takes one token from each of many sequences; averaged over layers."""
    cfg = model.config
    tokens = calibration_tokens(cfg.vocab_size, seed + 7, sequences=32, length=32)
    gen = torch.Generator().manual_seed(seed + 11)
    routed = [
        torch.topk(x @ layer.mlp.gate.weight.float().t(), cfg.num_experts_per_tok).indices
        for x, layer in zip(_router_inputs(model, tokens), model.model.layers)
    ]  # per layer [N, k]
    coverage = {}
    for n in batch_sizes:
        total = 0.0
        for ids in routed:
            for _ in range(samples):
                pick = torch.randperm(ids.shape[0], generator=gen)[:n]
                total += ids[pick].unique().numel() / cfg.num_experts
        coverage[n] = total / (samples * len(routed))
    return coverage
