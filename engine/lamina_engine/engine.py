"""Engine: the step loop shared by the offline LLM and the servers.

    add_request() -> step(): schedule -> run -> postprocess -> StepResult

The scheduler decides which tokens run, the runner computes them, and postprocessing here turns
sampled ids into text, applies the stop rules and records timing and counters. A prefill pod
plugs a KV export connector in (kv_export.py); the engine hands it each prompt's KV.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch

from lamina_engine.config import EngineConfig
from lamina_engine.core.output import SchedulerOutput
from lamina_engine.core.scheduler import RequestRejectedError, Scheduler
from lamina_engine.core.scheduler_config import SchedulerConfig
from lamina_engine.cpu_reproducibility import cnr_warning
from lamina_engine.detokenizer import IncrementalDetokenizer
from lamina_engine.engine_stats import EngineStats, StepTotals
from lamina_engine.kernels.cpu_ops import native_ops
from lamina_engine.kernels.dispatch import set_kernels
from lamina_engine.kv_export import KVExport, PromptKV
from lamina_engine.kv_import import KVImport
from lamina_engine.models import CausalLM
from lamina_engine.models.checkpoint import checkpoint_dtype
from lamina_engine.models.layers import set_batch_invariant
from lamina_engine.request_output import RequestMetrics, RequestOutput
from lamina_engine.runner.kv_cache import kv_bytes_held, kv_bytes_per_block
from lamina_engine.runner.model_runner import ModelRunner, SequencesFailed, StepSample
from lamina_engine.sampling_params import SamplingParams
from lamina_engine.sequence import Sequence
from lamina_engine.speed_config import resolve_speed
from lamina_engine.step_result import LayerGroupRun, StepResult
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
            dtype=config.resolved_dtype(checkpoint_dtype(config.model)),
            device=device,
            progress=progress,
        )
        self.kernels = set_kernels(self.model, config.kernels)  # "triton" or "torch"
        if torch.device(device).type == "cpu" and (why := cnr_warning()):
            log.warning(why)  # MKL ran before lamina_engine was imported: no CNR mode
        set_batch_invariant(self.model, config.batch_invariant)
        if torch.device(device).type == "cpu":
            native_ops()  # build the CPU kernels now (once per machine), not in a first step
        self.tokenizer = Tokenizer.maybe_from_pretrained(config.model)
        mc = self.model.config
        self.max_model_len = min(
            config.max_model_len or mc.max_position_embeddings, mc.max_position_embeddings
        )
        dtype = next(self.model.parameters()).dtype
        # SPEED (off unless set or carried by config.json). Blocks are sized as without it:
        # the upper layers' pool is smaller, so SPEED never uses more memory than full depth.
        self.speed = resolve_speed(config.speed, config.model, mc.num_layers)
        num_blocks = config.num_gpu_blocks or self._blocks_from_memory(device, dtype)
        self.scheduler = Scheduler(
            SchedulerConfig(
                max_num_seqs=config.max_num_seqs,
                max_num_batched_tokens=config.max_num_batched_tokens,
                block_size=config.block_size,
                num_blocks=num_blocks,
                max_model_len=self.max_model_len,
                enable_prefix_caching=config.enable_prefix_caching,
                scheduling_policy=config.scheduling_policy,
                layered_budget=config.layered_budget,
                layered_max_groups=config.layered_max_groups,
                layered_group_tokens=config.layered_group_tokens,
                num_layers=mc.num_layers if self.speed is None else self.speed.prefill_layers,
                speed=self.speed,
            )
        )
        self.runner = ModelRunner(
            self.model, num_blocks, config.block_size, seed=config.seed, speed=self.speed
        )
        self.kv_import = KVImport(self.scheduler, self.runner.kv_caches, mc, self.speed)
        self.num_blocks = num_blocks
        self.eos_token_ids: frozenset[int] = frozenset(
            self.tokenizer.eos_token_ids if self.tokenizer else mc.eos_token_ids
        )
        self.stats = EngineStats()
        self._requests: dict[str, _Request] = {}
        self._by_seq: dict[int, _Request] = {}
        self.kv_export: KVExport | None = None  # the prefill role's (connect_kv_export)

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
        self._check_new(request_id)
        ids = self._prompt_ids(prompt)
        seq = Sequence(ids, params, arrival_time=time.perf_counter())
        try:
            self.scheduler.add(seq)
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from exc
        text = prompt if isinstance(prompt, str) else None
        return self._register(request_id, seq, text).output

    def _check_new(self, request_id: str) -> None:
        if request_id in self._requests or request_id in self.kv_import:
            raise InvalidRequest(f"request id {request_id!r} is already in flight")

    def _prompt_ids(self, prompt: str | list[int]) -> list[int]:
        """Token ids of a prompt this engine can serve, else InvalidRequest."""
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
        if len(ids) + 1 > self.max_model_len:
            raise InvalidRequest(
                f"prompt has {len(ids)} tokens; the context is {self.max_model_len} tokens "
                "(max_model_len), which must hold the prompt and at least one output token"
            )
        vocab = self.model.config.vocab_size
        if any(t < 0 or t >= vocab for t in ids):
            raise InvalidRequest(f"prompt token ids must be in [0, {vocab}) for this model")
        return ids

    def _register(self, request_id: str, seq: Sequence, text: str | None) -> _Request:
        """Track an admitted sequence: its output, detokenizer, stop ids and generator."""
        params, ids = seq.params, seq.prompt_token_ids
        out = RequestOutput(request_id, text, ids, metrics=RequestMetrics(seq.arrival_time))
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
        return req

    # ------------------------------------------- prompts computed elsewhere (kv_import.py)
    def reserve_prefilled(
        self,
        request_id: str,
        prompt_ids: list[int],
        params: SamplingParams,
        cacheable: bool = True,
    ) -> bool:
        """Hold KV blocks for a prompt a prefill pod computes; load its layer groups with
        load_prefilled_group as they arrive, then activate_prefilled (or release_prefilled).
        False, nothing held, when the blocks do not fit now (the caller recomputes instead);
        InvalidRequest for a request this engine cannot serve at all; ValueError when it
        needs its prompt computed here. `cacheable` False: the shipped KV (from an unverified
        source) never enters the prefix cache."""
        self._check_new(request_id)
        ids = self._prompt_ids(list(prompt_ids))
        try:
            return self.kv_import.reserve(request_id, ids, params, cacheable)
        except RequestRejectedError as exc:
            raise InvalidRequest(str(exc)) from exc

    def load_prefilled_group(self, request_id: str, layer_start: int, kv: torch.Tensor) -> None:
        """Scatter one layer group [2, Lg, T, Hkv*D]; ValueError when it does not fit."""
        self.kv_import.load_group(request_id, layer_start, kv)

    def activate_prefilled(self, request_id: str, first_token: int) -> RequestOutput:
        """Every layer is loaded: the request continues as a decode from `first_token`, the
        token the prefill sampled. ValueError (reservation kept) when layers are missing."""
        seq = self.kv_import.activate(request_id, first_token)
        req = self._register(request_id, seq, None)
        req.output.metrics.first_scheduled_time = seq.arrival_time
        self.runner.skip_sample(seq)  # the prefill pod drew `first_token` from this seed
        self._on_token(req, StepSample(int(first_token), 0.0, None), time.perf_counter())
        return req.output

    def release_prefilled(self, request_id: str) -> None:
        """Give back a reservation's blocks (any failure, or abort); unknown ids are fine."""
        self.kv_import.release(request_id)

    @property
    def kv_dtype(self) -> torch.dtype:
        """The KV cache's dtype: shipped KV must arrive in it."""
        return self.runner.dtype

    @property
    def kv_bytes_per_token_layer(self) -> int:
        """Bytes of K and V of one token in one layer: 2 x Hkv x D x itemsize."""
        c = self.model.config
        return 2 * c.num_kv_heads * c.head_dim * self.runner.kv_caches[0].element_size()

    def connect_kv_export(self, connector: KVExport | None) -> None:
        """Prefill role: hand every prompt's KV to `connector` (kv_export.py); None stops."""
        self.kv_export = connector

    def abort(self, request_id: str) -> None:
        req = self._requests.get(request_id)
        if req is not None:
            self._finish(req, "abort")
        self.kv_import.release(request_id)  # a prompt whose KV was still loading
        if self.kv_export is not None:
            self.kv_export.forget(request_id)

    def has_unfinished(self) -> bool:
        return bool(self._requests)

    # ---------------------------------------------------------------- the step
    def step(self) -> StepResult:
        """Run one scheduler step: the outputs that changed (new tokens or finished), what
        ran, and the layered cohort's group just computed."""
        out = self.scheduler.schedule()
        if out.is_empty:
            return StepResult()
        now = time.perf_counter()
        for chunk in out.scheduled_chunks:
            m = self._by_seq[chunk.seq.seq_id].output.metrics
            if m.first_scheduled_time is None:
                m.first_scheduled_time = now
        result = StepResult(schedule=out)
        samples = self._execute(out, result)
        self.scheduler.postprocess(out, {sid: s.token_id for sid, s in samples.items()})
        self._count(out, len(samples))
        now = time.perf_counter()
        for seq_id, sample in samples.items():
            req = self._by_seq[seq_id]
            self._on_token(req, sample, now)
            result.outputs.append(req.output)
        result.layer_group = self._layer_group_run(out)
        if self.kv_export is not None:
            self.kv_export.on_step(result)
        return result

    def _execute(self, out: SchedulerOutput, result: StepResult) -> dict[int, StepSample]:
        """Run the step's batch. A failure fails only the requests it belongs to (finish
        reason "error", the message in result.errors): the rows whose sampling raised, else
        every request in this batch; the others, and everything not in it, go on."""
        try:
            return self.runner.execute(out)
        except SequencesFailed as exc:
            failed, samples = exc.failed, exc.samples
        except Exception as exc:  # the forward pass itself: not attributable to one request
            log.exception("engine step failed; failing the %d request(s) of its batch",
                          len(out.scheduled_chunks))  # fmt: skip
            why = f"engine step failed: {type(exc).__name__}: {exc}"
            failed, samples = {c.seq.seq_id: why for c in out.scheduled_chunks}, {}
        for seq_id, why in failed.items():
            req = self._by_seq.get(seq_id)
            if req is None:
                continue
            log.warning("request %s failed: %s", req.request_id, why)
            result.errors[req.request_id] = why
            self._finish(req, "error")
            if self.kv_export is not None:
                self.kv_export.forget(req.request_id)
            result.outputs.append(req.output)
        return samples

    def _prompt_kv(self, seq: Sequence) -> PromptKV:
        return PromptKV(self.runner.kv_caches, seq, self.model.config.num_layers, self.speed)

    def _layer_group_run(self, out: SchedulerOutput) -> LayerGroupRun | None:
        """The cohort group just run and its members still running whose whole prompt it
        computed (a prompt cut across cohorts has no whole layer group yet)."""
        co = out.cohort
        if co is None:
            return None
        prompts = {}
        for chunk in co.chunks:
            seq = chunk.seq
            req = self._by_seq.get(seq.seq_id)
            whole = chunk.start + chunk.num_tokens == seq.num_prompt_tokens
            if req is not None and whole and not seq.is_finished:
                prompts[req.request_id] = self._prompt_kv(seq)
        return LayerGroupRun(co.group, co.num_groups, co.layer_start, co.layer_end, prompts)

    def _count(self, out: SchedulerOutput, num_sampled: int = 0) -> None:
        es, sched = self.model.expert_stats, self.scheduler
        self.stats.count_step(
            out,
            StepTotals(
                num_layers=self.model.config.num_layers,
                speed=self.speed,
                tokens_sampled=num_sampled,
                model_seconds=self.runner.model_seconds,
                layer_groups_run=self.runner.layer_groups_run,
                expert_loads=es.experts_loaded,
                expert_bytes=es.bytes_loaded,
                kv_bytes_held=kv_bytes_held(sched.block_manager, self.runner.kv_caches),
                num_running=sched.num_running,
                num_waiting=sched.num_waiting,
            ),
        )

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
            delta = req.detok.step([tok], is_stop_token=reason is not None)
            if delta.text:
                out.text_pieces.append(delta.text)
            hit = delta.stop_str
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
            tail = req.detok.finish()  # text held back until now (a possible stop string)
            if tail:
                out.text_pieces.append(tail)
        if self.kv_export is not None and reason in ("stop", "length"):
            first = req.seq.output_token_ids[0]
            self.kv_export.on_finish(req.request_id, self._prompt_kv(req.seq), first)
        if not req.seq.is_finished:
            self.scheduler.finish(req.seq, reason)
        self.runner.remove_request(req.seq.seq_id)
        del self._requests[req.request_id]
        del self._by_seq[req.seq.seq_id]
        self.stats.requests_finished += 1
