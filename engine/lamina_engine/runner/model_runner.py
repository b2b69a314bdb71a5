"""ModelRunner: SchedulerOutput -> flat token batch -> model over the paged KV cache -> samples.

The runner owns the device state (weights, KV cache, generators, the layered-prefill cohort's
hidden states between layer groups); the scheduler owns the bookkeeping. A step's tokens are
laid out sequence after sequence, in the scheduler's order. A step that carries a cohort runs
through `runner/layered.py`; any other is one plain forward over all layers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from lamina_engine.core.output import SchedulerOutput
from lamina_engine.core.speed_layout import SpeedLayout
from lamina_engine.models import CausalLM, allocate_kv_caches
from lamina_engine.runner.layered import CohortStash, TokenBatch, run_layered_step
from lamina_engine.runner.step import allocate_speed_kv_caches, run_speed_step
from lamina_engine.sampler import Sampler
from lamina_engine.sequence import Sequence


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
    def __init__(
        self,
        model: CausalLM,
        num_blocks: int,
        block_size: int,
        seed: int = 0,
        speed: SpeedLayout | None = None,
    ):
        self.model = model
        self.block_size = block_size
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        # SPEED: layers >= K get the (smaller) upper pool's block count (runner/step.py)
        self.speed = speed
        if speed is None:
            self.kv_caches = allocate_kv_caches(
                model.config, num_blocks, block_size, self.dtype, self.device
            )
        else:
            self.kv_caches = allocate_speed_kv_caches(
                model.config, speed, num_blocks, block_size, self.dtype, self.device
            )
        self.sampler = Sampler()
        self.default_generator = torch.Generator(device=self.device).manual_seed(seed)
        self._generators: dict[int, torch.Generator] = {}
        self._early_stop_ids: dict[int, list[int]] = {}
        self.model_seconds = 0.0
        self.stash = CohortStash()
        self.layer_groups_run = 0  # cohort layer groups executed (layered prefill)

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

    def skip_sample(self, seq: Sequence) -> None:
        """`seq`'s last token was sampled elsewhere (a prefill pod, same seed): draw one row
        and drop it, so its generator stands where a local run's would (the sampler decides
        how many draws a row takes)."""
        generator = self._generators.get(seq.seq_id)
        if generator is not None:
            logits = torch.zeros(1, self.model.config.vocab_size, device=self.device)
            self.sampler.sample(logits, [seq.params], [generator])

    def _ban_early_stops(self, logits: torch.Tensor, seqs) -> None:
        for row, seq in enumerate(seqs):
            banned = self._early_stop_ids.get(seq.seq_id)
            if banned and seq.num_output_tokens < seq.params.min_tokens:
                logits[row, banned] = float("-inf")

    @torch.inference_mode()
    def execute(self, out: SchedulerOutput) -> dict[int, StepSample]:
        """Run one step; returns the sampled token of every chunk that completes its sequence."""
        t0 = time.perf_counter()
        if self.speed is not None:
            args = (self.kv_caches, out, self.stash, self.speed, self.block_size, self.device)
            hidden, seqs = run_speed_step(self.model, *args)
            self.layer_groups_run += out.cohort is not None
        elif out.cohort is not None:
            hidden, seqs = run_layered_step(
                self.model, self.kv_caches, out, self.stash, self.block_size, self.device
            )
            self.layer_groups_run += 1
        else:
            self.stash.clear()  # a cohort whose members were all aborted never comes back
            hidden, seqs = self._forward_all_layers(out)
        results = self._sample(hidden, seqs) if seqs else {}
        self.model_seconds += time.perf_counter() - t0
        return results

    def _forward_all_layers(self, out: SchedulerOutput) -> tuple[torch.Tensor | None, list]:
        """Plain step: normed hidden [N, D] of each sampling chunk's last token, and its seqs."""
        if not out.chunks:
            return None, []
        batch = TokenBatch.of(out.chunks)
        md = batch.metadata(self.block_size, self.device)
        input_ids, pos = batch.tensors(self.device)
        hidden = self.model.forward(input_ids, pos, md, self.kv_caches)
        rows, seqs, end = [], [], 0
        for chunk in out.chunks:
            end += chunk.num_tokens
            if chunk.samples:
                rows.append(end - 1)
                seqs.append(chunk.seq)
        if not rows:
            return None, []
        index = torch.tensor(rows, dtype=torch.long, device=self.device)
        return hidden.index_select(0, index), seqs

    def _sample(self, hidden: torch.Tensor, seqs: list[Sequence]) -> dict[int, StepSample]:
        logits = self.model.compute_logits(hidden)
        self._ban_early_stops(logits, seqs)
        params = [s.params for s in seqs]
        gens = [self._generators.get(s.seq_id, self.default_generator) for s in seqs]
        sampled = self.sampler.sample(logits, params, gens)
        results: dict[int, StepSample] = {}
        for i, seq in enumerate(seqs):
            top = sampled.top_logprobs[i] if sampled.top_logprobs is not None else None
            results[seq.seq_id] = StepSample(
                int(sampled.token_ids[i]), float(sampled.logprobs[i]), top
            )
        return results
