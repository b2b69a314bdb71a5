"""EngineStats: cumulative engine counters, and a StepRecord of what each step did."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from lamina_engine.core.output import SchedulerOutput
from lamina_engine.core.speed_layout import SpeedLayout, prompt_layer_tokens

# Step records kept by default: enough for a benchmark that reads each record right after its
# step, small enough (~200 B each) that a long-running server's memory stays flat.
DEFAULT_STEP_RECORDS = 1024


@dataclass
class StepRecord:
    """What one engine step did: its batch, its model time and the traffic it caused.

    Token counts follow EngineStats: a prompt token counts as prefill once, when its KV exists
    in every layer (for a layered cohort: in the step of its last group). `token_layers`,
    `attention_pairs` and `kv_tokens_read` count the work actually run in this step, group by group, for cost models.
    """

    index: int  # 1-based: equals EngineStats.steps after this step
    model_seconds: float  # wall time of the model forward + sampling in this step
    prefill_tokens: int  # prompt tokens whose KV became complete in this step
    decode_tokens: int  # one-token decode chunks run in this step
    scheduled_tokens: int  # tokens in the batch (full-depth chunks + the cohort group)
    token_layers: int  # sum over tokens run of the layers each ran through
    attention_pairs: int  # sum over layers run of (query, cached key) pairs attended
    kv_tokens_read: int  # sum over layers run of the cached tokens each chunk's attention reads
    prompt_layer_tokens: int  # prompt tokens x layers they ran, counted when computed (SPEED-aware)
    layer_group: int | None  # layered prefill: the cohort's group g this step, else None
    num_groups: int  # G of the cohort in flight (0 without one)
    tokens_sampled: int  # output tokens produced
    expert_loads: int  # experts with >= 1 token, summed over this step's MoE calls
    expert_bytes: int  # their weight bytes
    kv_bytes_held: int  # KV-cache bytes in allocated blocks after the step
    num_running: int  # sequences running after the step
    num_waiting: int  # sequences waiting after the step
    preempted: int  # sequences preempted by this step's schedule


@dataclass(frozen=True)
class StepTotals:
    """What the engine's parts report after a step (their running totals), for `count_step`."""

    num_layers: int  # L
    speed: SpeedLayout | None
    tokens_sampled: int  # this step
    model_seconds: float  # runner total
    layer_groups_run: int  # runner total
    expert_loads: int  # MoE totals
    expert_bytes: int
    kv_bytes_held: int  # now
    num_running: int  # now
    num_waiting: int


@dataclass
class EngineStats:
    """Cumulative counters; benchmarks diff two snapshots.

    `step_records` keeps the latest steps (bounded; None turns recording off); a benchmark
    reads `step_records[-1]` after each step to keep the whole history.
    """

    steps: int = 0
    prefill_tokens: int = 0
    decode_tokens: int = 0
    preemptions: int = 0
    requests_finished: int = 0
    expert_loads: int = 0  # sum over MoE calls of experts with >= 1 routed token
    expert_bytes_loaded: int = 0  # expert_loads x bytes per expert
    model_seconds: float = 0.0  # time spent in the model forward + sampling
    layer_groups_run: int = 0  # layered prefill: cohort layer groups executed
    peak_kv_bytes: int = 0  # most KV-cache bytes held in allocated blocks after any step
    # sum over computed prompt tokens of the layers each ran (SPEED: K, or L if full depth)
    prompt_layer_tokens: int = 0
    step_records: deque[StepRecord] | None = field(
        default_factory=lambda: deque(maxlen=DEFAULT_STEP_RECORDS)
    )

    def snapshot(self) -> EngineStats:
        fields = dict(self.__dict__)
        if self.step_records is not None:
            fields["step_records"] = deque(self.step_records, maxlen=self.step_records.maxlen)
        return EngineStats(**fields)

    def count_step(self, out: SchedulerOutput, now: StepTotals) -> None:
        """Add the step `out` just run; append its StepRecord when records are kept."""
        before = (self.prefill_tokens, self.decode_tokens, self.expert_loads)
        bytes_before, seconds_before = self.expert_bytes_loaded, self.model_seconds
        layer_tokens_before = self.prompt_layer_tokens
        self.steps += 1
        self.preemptions += len(out.preempted)
        # A layered cohort's prompt tokens count once, at their last layer group.
        for c in out.computed_chunks:
            if c.num_tokens == 1 and c.start >= c.seq.num_prompt_tokens:
                self.decode_tokens += 1
            else:
                self.prefill_tokens += c.num_tokens
        self.prompt_layer_tokens += prompt_layer_tokens(
            out.computed_chunks, now.num_layers, now.speed
        )
        self.expert_loads, self.expert_bytes_loaded = now.expert_loads, now.expert_bytes
        self.model_seconds = now.model_seconds
        self.layer_groups_run = now.layer_groups_run
        self.peak_kv_bytes = max(self.peak_kv_bytes, now.kv_bytes_held)
        if self.step_records is None:
            return
        token_layers, pairs, kv_read = out.work(now.num_layers)
        cohort = out.cohort
        self.step_records.append(
            StepRecord(
                index=self.steps,
                model_seconds=self.model_seconds - seconds_before,
                prefill_tokens=self.prefill_tokens - before[0],
                decode_tokens=self.decode_tokens - before[1],
                scheduled_tokens=out.num_batched_tokens,
                token_layers=token_layers,
                attention_pairs=pairs,
                kv_tokens_read=kv_read,
                prompt_layer_tokens=self.prompt_layer_tokens - layer_tokens_before,
                layer_group=None if cohort is None else cohort.group,
                num_groups=0 if cohort is None else cohort.num_groups,
                tokens_sampled=now.tokens_sampled,
                expert_loads=self.expert_loads - before[2],
                expert_bytes=self.expert_bytes_loaded - bytes_before,
                kv_bytes_held=now.kv_bytes_held,
                num_running=now.num_running,
                num_waiting=now.num_waiting,
                preempted=len(out.preempted),
            )
        )
