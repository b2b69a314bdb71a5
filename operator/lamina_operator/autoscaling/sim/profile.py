"""Service rates of one prefill and one decode pod, taken from Lamina's own engine benchmark.

Source: docs/benchmarks.md, "Serving (router, disaggregation, KV over Redis)": the demo model
(4 layers, hidden 256, 8 experts top-2) served as router + prefill + decode pods, each a
`lamina serve` process, 40 sharegpt-like requests at 1 request/s on the 2-core CPU host:
- prefill: 9221 prompt tokens over 40 requests (230 per request); unified TTFT p50 111 ms, of
  which one decode step is 16.8 ms, so ~95 ms per 230-token prompt: about 2400 tokens/s;
- KV hop: the disaggregated TTFT p50 (136 ms) minus the unified one (111 ms): 25 ms, plus a
  few ms to publish; 30 ms;
- decode step: TBT p50 16.8 ms at a running batch of about one (54.5 output tokens/s x
  16.8 ms). How the step grows with the batch was not measured on that setup; the slope
  1.2 ms per running sequence is an assumption (memory-bound MoE decode: each extra sequence
  touches more experts and reads its KV), stated here and in docs/autoscaling.md.
Pod start-up (scheduling, image, weights) and warm-up (first requests slower: allocator,
caches, compilation) are assumptions too; the simulation scores every controller on the same
ones, so they shift absolute numbers, not the comparison.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServiceProfile:
    prefill_tokens_per_second: float = 2400.0
    kv_hop_seconds: float = 0.030
    decode_step_seconds: float = 0.0168  # at a batch of one
    decode_step_per_sequence: float = 0.0012  # added per running sequence (assumption)
    decode_max_sequences: int = 64  # max_num_seqs
    decode_kv_tokens: int = 32_000  # KV cache capacity of one decode pod, in tokens
    startup_seconds: float = 60.0  # created -> Ready
    warmup_seconds: float = 30.0  # after Ready: slower, and its latency samples are outliers
    warmup_slowdown: float = 3.0  # step/prefill time multiplier while warming up
    gpus_per_pod: int = 1

    def step_seconds(self, batch: int, warming: bool) -> float:
        step = self.decode_step_seconds + self.decode_step_per_sequence * batch
        return step * (self.warmup_slowdown if warming else 1.0)
