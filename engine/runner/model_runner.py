"""ModelRunner: SchedulerOutput -> flat token batch -> model over the paged KV cache -> samples.

The runner owns the device state (weights, KV cache, generators); the scheduler owns the
bookkeeping. A step's tokens are laid out sequence after sequence, in the scheduler's order.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from lamina_engine.core.scheduler import SchedulerOutput
from lamina_engine.models import AttentionMetadata, CausalLM, allocate_kv_caches
from lamina_engine.sampler import Sampler


@dataclass
class StepSample:
    """What one sampling chunk produced."""

    token_id: int
    logprob: float
    top_logprobs: dict[int, float] | None


def kv_bytes_per_block(model: CausalLM, block_size: int, dtype: torch.dtype) -> int:
    c = model.config
    itemsize = torch.empty((), dtype=dtype).element_size()
    return 2 * c.num_layers * block_size * c.num_key_value_heads * c.head_dim * itemsize


class ModelRunner:
    def __init__(self, model: CausalLM, num_blocks: int, block_size: int, seed: int = 0):
        self.model = model
        self.block_size = block_size
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.kv_caches = allocate_kv_caches(
            model.config, num_blocks, block_size, self.dtype, self.device
        )
        self.sampler = Sampler()
        self.default_generator = torch.Generator(device=self.device).manual_seed(seed)
        self._generators: dict[int, torch.Generator] = {}
        self._early_stop_ids: dict[int, list[int]] = {}
        self.model_seconds = 0.0

    def add_request(self, seq_id: int, seed: int | None) -> None:
        """Seeded requests draw only from their own generator (same seed -> same tokens)."""
        if seed is not None:
            self._generators[seq_id] = torch.Generator(device=self.device).manual_seed(seed)

    def remove_request(self, seq_id: int) -> None:
        self._generators.pop(seq_id, None)
        self._early_stop_ids.pop(seq_id, None)

    def ban_until_min_tokens(self, seq_id: int, token_ids: list[int]) -> None:
        """Before `min_tokens` outputs, these ids (EOS, stop_token_ids) cannot be sampled."""
        if token_ids:
            self._early_stop_ids[seq_id] = token_ids

    def _ban_early_stops(self, logits: torch.Tensor, seqs) -> None:
        for row, seq in enumerate(seqs):
            banned = self._early_stop_ids.get(seq.seq_id)
            if banned and seq.num_output_tokens < seq.params.min_tokens:
                logits[row, banned] = float("-inf")

    @torch.inference_mode()
    def execute(self, out: SchedulerOutput) -> dict[int, StepSample]:
        """Run one step; returns the sampled token of every chunk that completes its sequence."""
        t0 = time.perf_counter()
        ids: list[int] = []
        positions: list[int] = []
        starts, qlens, tables = [], [], []
        sample_rows, sampled_seqs = [], []
        for chunk in out.chunks:
            seq = chunk.seq
            end = chunk.start + chunk.num_tokens
            ids.extend(seq.all_token_ids[chunk.start : end])
            positions.extend(range(chunk.start, end))
            starts.append(chunk.start)
            qlens.append(chunk.num_tokens)
            tables.append(seq.block_table)
            if chunk.samples:
                sample_rows.append(len(ids) - 1)
                sampled_seqs.append(seq)
        if not ids:
            return {}
        dev = self.device
        md = AttentionMetadata.build(starts, qlens, tables, self.block_size, dev)
        input_ids = torch.tensor(ids, dtype=torch.long, device=dev)
        pos = torch.tensor(positions, dtype=torch.long, device=dev)
        hidden = self.model.forward(input_ids, pos, md, self.kv_caches)
        results: dict[int, StepSample] = {}
        if sample_rows:
            rows = torch.tensor(sample_rows, dtype=torch.long, device=dev)
            logits = self.model.compute_logits(hidden.index_select(0, rows))
            self._ban_early_stops(logits, sampled_seqs)
            params = [s.params for s in sampled_seqs]
            gens = [self._generators.get(s.seq_id, self.default_generator) for s in sampled_seqs]
            sampled = self.sampler.sample(logits, params, gens)
            for i, seq in enumerate(sampled_seqs):
                top = sampled.top_logprobs[i] if sampled.top_logprobs is not None else None
                results[seq.seq_id] = StepSample(
                    int(sampled.token_ids[i]), float(sampled.logprobs[i]), top
                )
        self.model_seconds += time.perf_counter() - t0
        return results
