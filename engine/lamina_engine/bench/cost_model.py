"""A deterministic roofline clock: step time from a step's counted work on a named device.

    t_step = max(FLOPs / peak_flops, bytes / peak_bandwidth) + overhead

FLOPs (per token-layer): 2 x (attention projections + router + top-k experts' weights), plus
4 x heads x head_dim per attended (query, key) pair, plus 2 x vocab x hidden per sampled token.
Bytes: the non-expert weights of every layer the step runs, the LM head when a token is sampled,
the expert weights the step actually loaded (the engine's count of experts with >= 1 routed
token, re-priced at the cost dtype), and the KV the step's attention reads. Activations are
ignored. Why: CPU wall time hides the memory-bound behaviour of MoE decode (a CPU is compute
bound at these sizes), so expert-load savings never show up as time there; on a GPU they do.
"""

from __future__ import annotations

from dataclasses import dataclass

from lamina_engine.engine_stats import StepRecord
from lamina_engine.models.config import ModelConfig


@dataclass(frozen=True)
class DeviceSpec:
    name: str
    peak_flops: float  # dense FLOP/s at the cost dtype
    peak_bandwidth: float  # HBM bytes/s
    itemsize: int  # bytes per weight / KV element at the cost dtype


DEVICES = {
    # H100 SXM: 989 TFLOP/s dense BF16, 3.35 TB/s HBM3.
    "h100": DeviceSpec("h100", 989e12, 3.35e12, 2),
    # H200: same compute, 4.8 TB/s HBM3e.
    "h200": DeviceSpec("h200", 989e12, 4.8e12, 2),
}


class CostModel:
    def __init__(
        self,
        config: ModelConfig,
        device: str = "h100",
        *,
        model_itemsize: int = 4,
        step_overhead: float = 0.0,
    ):
        if device not in DEVICES:
            raise ValueError(f"unknown device {device!r} for --cost-model; choose {list(DEVICES)}")
        self.device = DEVICES[device]
        self.step_overhead = step_overhead
        c = config
        h, hd = c.hidden_size, c.head_dim
        attn = h * hd * (2 * c.num_heads + 2 * c.num_kv_heads)  # q, k, v, o projections
        moe = c.is_moe
        self.expert_params = 3 * h * (c.moe_intermediate_size if moe else c.intermediate_size)
        router = h * c.num_experts if moe else 0
        active = self.expert_params * (c.num_experts_per_tok if moe else 1)
        self.flops_per_token_layer = 2 * (attn + router + active)
        self.flops_per_pair = 4 * c.num_heads * hd  # q.k and p.v
        self.flops_per_sample = 2 * c.vocab_size * h
        b = self.device.itemsize
        # Dense models read their MLP every layer; MoE models pay experts via expert_bytes.
        self.layer_weight_bytes = (attn + router + (0 if moe else self.expert_params)) * b
        self.lm_head_bytes = c.vocab_size * h * b
        self.kv_bytes_per_token_layer = 2 * c.num_kv_heads * hd * b
        self.num_layers = c.num_layers
        self.reprice = b / model_itemsize  # engine counts expert bytes at the model's dtype

    def step_flops(self, r: StepRecord) -> float:
        return (
            r.token_layers * self.flops_per_token_layer
            + r.attention_pairs * self.flops_per_pair
            + r.tokens_sampled * self.flops_per_sample
        )

    def step_bytes(self, r: StepRecord) -> float:
        # Decodes run every layer; a prefill-only step with a cohort runs only its group.
        layers = self.num_layers
        if r.num_groups and not r.decode_tokens:
            layers = -(-self.num_layers // r.num_groups)
        return (
            layers * self.layer_weight_bytes
            + (self.lm_head_bytes if r.tokens_sampled else 0)
            + r.expert_bytes * self.reprice
            + r.kv_tokens_read * self.kv_bytes_per_token_layer
        )

    def step_seconds(self, r: StepRecord) -> float:
        d = self.device
        return (
            max(self.step_flops(r) / d.peak_flops, self.step_bytes(r) / d.peak_bandwidth)
            + self.step_overhead
        )
