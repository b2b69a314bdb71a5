"""ModelRunner: SchedulerOutput -> flat token batch -> model over the paged KV cache -> samples.

The runner owns the device state (weights, KV cache, generators, the layered-prefill cohort's
hidden states between layer groups); the scheduler owns the bookkeeping. A step's tokens are
laid out sequence after sequence, in the scheduler's order, and run through `run_step`
(runner/step.py) whatever the policy and whether SPEED is on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from lamina_engine.core.output import SchedulerOutput
from lamina_engine.core.speed_layout import SpeedLayout
from lamina_engine.models import CausalLM
from lamina_engine.runner.cohort_stash import CohortStash
from lamina_engine.runner.kv_cache import allocate_kv_pools
from lamina_engine.runner.step import run_step
from lamina_engine.sampler import Sampler, SamplerOutput, SamplingFailed, make_generator
from lamina_engine.sequence import Sequence


@dataclass
class StepSample:
    """What one sampling chunk produced."""

    token_id: int
    logprob: float
    top_logprobs: dict[int, float] | None


class SequencesFailed(RuntimeError):
    """A step's sampling failed for some sequences: `failed` seq_id -> why; `samples`: the
    other sequences' samples (the step's forward pass ran for all of them)."""

    def __init__(self, failed: dict[int, str], samples: dict[int, StepSample]) -> None:
        super().__init__(next(iter(failed.values())))
        self.failed, self.samples = failed, samples


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
        # SPEED: layers >= K get the (smaller) upper pool's block count (runner/kv_cache.py)
        self.speed = speed
        self.kv_caches = allocate_kv_pools(
            model.config, num_blocks, block_size, self.dtype, self.device, speed
        )
        self.sampler = Sampler()
        # unseeded requests all draw from this one, so a run is reproducible from `seed`
        self.default_generator = make_generator(seed, self.device)
        self._generators: dict[int, torch.Generator] = {}
        self._early_stop_ids: dict[int, list[int]] = {}
        self.model_seconds = 0.0
        self.stash = CohortStash()
        self.layer_groups_run = 0  # cohort layer groups executed (layered prefill)

    def add_request(self, seq_id: int, seed: int | None) -> None:
        """Seeded requests draw only from their own generator (same seed -> same tokens)."""
        if seed is not None:
            self._generators[seq_id] = make_generator(seed, self.device)

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
        args = (self.kv_caches, out, self.stash, self.block_size, self.device, self.speed)
        hidden, seqs = run_step(self.model, *args)
        self.layer_groups_run += out.cohort is not None
        results = self._sample(hidden, seqs) if seqs else {}
        self.model_seconds += time.perf_counter() - t0
        return results

    def _sample(self, hidden: torch.Tensor, seqs: list[Sequence]) -> dict[int, StepSample]:
        logits = self.model.compute_logits(hidden)
        self._ban_early_stops(logits, seqs)
        params = [s.params for s in seqs]
        gens = [self._generators.get(s.seq_id, self.default_generator) for s in seqs]
        try:
            sampled = self.sampler.sample_isolating(logits, params, gens)
        except SamplingFailed as exc:  # rows -> sequences, for the engine to fail just those
            raise SequencesFailed(
                {seqs[row].seq_id: why for row, why in exc.failed.items()},
                {seqs[row].seq_id: _step_sample(o, 0) for row, o in exc.outputs.items()},
            ) from exc
        results: dict[int, StepSample] = {}
        for i, seq in enumerate(seqs):
            results[seq.seq_id] = _step_sample(sampled, i)
        return results


def _step_sample(sampled: SamplerOutput, i: int) -> StepSample:
    top = sampled.top_logprobs[i] if sampled.top_logprobs is not None else None
    return StepSample(int(sampled.token_ids[i]), float(sampled.logprobs[i]), top)
