"""Engine: the step loop shared by the offline LLM and the servers.

    add_request() -> step(): schedule -> run -> postprocess -> outputs

The scheduler decides which tokens run, the runner computes them, and postprocessing here turns
sampled ids into text, applies the stop rules and records timing and counters.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch

from lamina_engine.config import EngineConfig
from lamina_engine.core.scheduler import Scheduler, SchedulerConfig, SchedulerOutput
from lamina_engine.detokenizer import IncrementalDetokenizer
from lamina_engine.models import CausalLM
from lamina_engine.outputs import EngineStats, RequestMetrics, RequestOutput
from lamina_engine.runner.model_runner import ModelRunner, StepSample, kv_bytes_per_block
from lamina_engine.sampling_params import SamplingParams
from lamina_engine.sequence import Sequence
from lamina_engine.tokenizer import Tokenizer

log = logging.getLogger(__name__)


class InvalidRequest(ValueError):
    """A request the engine cannot serve (bad prompt, too long, cannot fit); others go on."""


@dataclass
class _Request:
    request_id: str
    seq: Sequence
    output: RequestOutput
    detok: IncrementalDetokenizer | None
    params: SamplingParams
    stop_ids: frozenset[int] = field(default_factory=frozenset)


class Engine:
    def __init__(self, config: EngineConfig, *, progress: bool = False):
        self.config = config
        device = config.resolved_device()
        self.model = CausalLM.from_pretrained(
            config.model,
            dtype=config.resolved_dtype(_checkpoint_dtype(config.model)),
            device=device,
            progress=progress,
        )
        self.tokenizer = Tokenizer.maybe_from_pretrained(config.model)
        mc = self.model.config
        self.max_model_len = min(
            config.max_model_len or mc.max_position_embeddings, mc.max_position_embeddings
        )
        dtype = next(self.model.parameters()).dtype
        num_blocks = config.num_gpu_blocks or self._blocks_from_memory(device, dtype)
        self.scheduler = Scheduler(
            SchedulerConfig(
                max_num_seqs=config.max_num_seqs,
                max_num_batched_tokens=config.max_num_batched_tokens,
                block_size=config.block_size,
                num_blocks=num_blocks,
                max_model_len=self.max_model_len,
                enable_prefix_caching=config.enable_prefix_caching,
                policy=config.scheduler,
                layered_budget=config.layered_budget,
                layered_max_groups=config.layered_max_groups,
                layered_group_tokens=config.layered_group_tokens,
                num_layers=mc.num_layers,
            )
        )
        self.runner = ModelRunner(self.model, num_blocks, config.block_size, seed=config.seed)
        self.num_blocks = num_blocks
        self.eos_token_ids: frozenset[int] = frozenset(
            self.tokenizer.eos_token_ids if self.tokenizer else mc.eos_token_ids
        )
        self.stats = EngineStats()
        self._requests: dict[str, _Request] = {}
        self._by_seq: dict[int, _Request] = {}
        self._expert_mark = (0, 0)

    # ---------------------------------------------------------------- admission
    def _blocks_from_memory(self, device: str, dtype: torch.dtype) -> int:
        per_block = kv_bytes_per_block(self.model, self.config.block_size, dtype)
        frac = self.config.kv_cache_memory_fraction
        if device == "cuda":
            free, _ = torch.cuda.mem_get_info()
            return max(1, int(free * frac) // per_block)
        # On CPU, size for max_num_seqs full-length sequences, capped by available memory.
        wanted = self.config.max_num_seqs * -(-self.max_model_len // self.config.block_size)
        import os

        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        return max(1, min(wanted, int(avail * frac * 0.5) // per_block))

    def add_request(
        self, request_id: str, prompt: str | list[int], params: SamplingParams | None = None
    ) -> RequestOutput:
        """Queue one request. Raises InvalidRequest (nothing queued) when it cannot be served."""
        params = params or SamplingParams()
        if request_id in self._requests:
            raise InvalidRequest(f"request id {request_id!r} is already in flight")
        text = prompt if isinstance(prompt, str) else None
        ids = self._encode(prompt)
        if len(ids) + 1 > self.max_model_len:
            raise InvalidRequest(
                f"prompt has {len(ids)} tokens; the context is {self.max_model_len} tokens "
                "(max_model_len), which must hold the prompt and at least one output token"
            )
        vocab = self.model.config.vocab_size
        if any(t < 0 or t >= vocab for t in ids):
            raise InvalidRequest(f"prompt token ids must be in [0, {vocab}) for this model")
        seq = Sequence(ids, params, arrival_time=time.perf_counter())
        try:
            self.scheduler.add(seq)
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from exc
        out = RequestOutput(request_id, text, list(ids), metrics=RequestMetrics(seq.arrival_time))
        if params.logprobs is not None:
            out.logprobs = []
            out.top_logprobs = [] if params.logprobs > 0 else None
        detok = None
        if self.tokenizer is not None:
            detok = IncrementalDetokenizer.from_params(self.tokenizer, params, ids)
        stop_ids = frozenset(params.stop_token_ids)
        req = _Request(request_id, seq, out, detok, params, stop_ids)
        self._requests[request_id] = req
        self._by_seq[seq.seq_id] = req
        self.runner.add_request(seq.seq_id, params.seed)
        if params.min_tokens:
            eos = set() if params.ignore_eos else set(self.eos_token_ids)
            banned = sorted((eos | stop_ids) & set(range(self.model.config.vocab_size)))
            self.runner.ban_until_min_tokens(seq.seq_id, banned)
        return out

    def _encode(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise InvalidRequest(
                    f"{self.config.model} has no tokenizer.json: pass prompts as token ids"
                )
            ids = self.tokenizer.encode(prompt)
        else:
            ids = [int(t) for t in prompt]
        if not ids:
            raise InvalidRequest("the prompt is empty: give at least one token")
        return ids

    def abort(self, request_id: str) -> None:
        req = self._requests.get(request_id)
        if req is not None:
            self._finish(req, "abort")

    def has_unfinished(self) -> bool:
        return bool(self._requests)

    # ---------------------------------------------------------------- the step
    def step(self) -> list[RequestOutput]:
        """Run one scheduler step; returns the outputs that changed (new tokens or finished)."""
        out = self.scheduler.schedule()
        if out.is_empty:
            return []
        now = time.perf_counter()
        for chunk in out.scheduled_chunks:
            m = self._by_seq[chunk.seq.seq_id].output.metrics
            if m.first_scheduled_time is None:
                m.first_scheduled_time = now
        samples = self.runner.execute(out)
        self.scheduler.postprocess(out, {sid: s.token_id for sid, s in samples.items()})
        self._count(out)
        now = time.perf_counter()
        changed = []
        for seq_id, sample in samples.items():
            req = self._by_seq[seq_id]
            self._on_token(req, sample, now)
            changed.append(req.output)
        return changed

    def _count(self, out: SchedulerOutput) -> None:
        s = self.stats
        s.steps += 1
        s.preemptions += len(out.preempted)
        # A layered cohort's prompt tokens count once, at their last layer group.
        for c in out.computed_chunks:
            if c.num_tokens == 1 and c.start >= c.seq.num_prompt_tokens:
                s.decode_tokens += 1
            else:
                s.prefill_tokens += c.num_tokens
        es = self.model.expert_stats
        s.expert_loads, s.expert_bytes_loaded = es.experts_loaded, es.bytes_loaded
        s.model_seconds = self.runner.model_seconds
        s.layer_groups_run = self.runner.layer_groups_run

    def _on_token(self, req: _Request, sample: StepSample, now: float) -> None:
        out, p, tok = req.output, req.params, sample.token_id
        m = out.metrics
        if m.first_token_time is None:
            m.first_token_time = now
        m.token_times.append(now)
        out.token_ids.append(tok)
        out.num_cached_tokens = req.seq.num_cached_tokens
        if out.logprobs is not None:
            out.logprobs.append(sample.logprob)
            if out.top_logprobs is not None:
                out.top_logprobs.append(sample.top_logprobs or {})
        n_out = len(out.token_ids)
        reason, stop_reason = None, None
        # EOS and stop ids cannot be sampled before min_tokens (the runner masks them).
        if tok in req.stop_ids:
            reason, stop_reason = "stop", tok
        elif not p.ignore_eos and tok in self.eos_token_ids:
            reason, stop_reason = "stop", None
        if req.detok is not None:
            hit = req.detok.add(tok, is_stop_token=reason is not None)
            out.text = req.detok.text
            if reason is None and hit is not None and n_out >= p.min_tokens:
                reason, stop_reason = "stop", hit
        if reason is None and (n_out >= p.max_tokens or req.seq.num_tokens >= self.max_model_len):
            reason = "length"
        if reason is not None:
            out.stop_reason = stop_reason
            self._finish(req, reason)

    def _finish(self, req: _Request, reason: str) -> None:
        out = req.output
        out.finished, out.finish_reason = True, reason
        out.metrics.finished_time = time.perf_counter()
        if req.detok is not None:
            out.text = req.detok.final_text()
        if not req.seq.is_finished:
            self.scheduler.finish(req.seq, reason)
        self.runner.remove_request(req.seq.seq_id)
        del self._requests[req.request_id]
        del self._by_seq[req.seq.seq_id]
        self.stats.requests_finished += 1


def _checkpoint_dtype(path: str) -> str | None:
    import json
    from pathlib import Path

    try:
        cfg = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return None  # the loader reports the real problem with a clear message
    name = cfg.get("torch_dtype") or cfg.get("dtype")
    return name if name in ("float32", "bfloat16", "float16") else None
