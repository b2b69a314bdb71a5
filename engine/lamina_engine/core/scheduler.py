"""Scheduler: queues requests, asks a policy for each step's batch, applies the step's results.

Invariant (as in vLLM v1): no request has a prefill or decode phase. Each has `num_tokens`
(prompt + outputs) and `num_computed_tokens` (KV cached); a step computes a chunk of the
difference, and a chunk that reaches the last token samples a new one. The engine loop is

    out = scheduler.schedule()               # SchedulerOutput: chunks, preempted
    samples = runner.execute(out)            # {seq_id: StepSample} for chunks with .samples
    sampled = {i: s.token_id for i, s in samples.items()}
    for seq in scheduler.postprocess(out, sampled):
        if <stop rule>: scheduler.finish(seq, "stop" | "length")

(engine.py's Engine.step). The engine decides stop rules (EOS, stop strings, max_tokens,
max_model_len). No torch here.
"""

from __future__ import annotations

from ..sequence import FINISH_REASONS, Sequence, SequenceStatus
from .block_manager import BlockManager
from .layered import LayeredPolicy
from .output import SchedulerOutput
from .policies import ChunkedPolicy, SchedulerState, SchedulingPolicy
from .scheduler_config import SchedulerConfig
from .speed_block_manager import SpeedBlockManager

# policy name (SchedulerConfig.scheduling_policy, validated against POLICY_NAMES) -> its class
POLICIES: dict[str, type[SchedulingPolicy]] = {
    ChunkedPolicy.name: ChunkedPolicy,
    LayeredPolicy.name: LayeredPolicy,
}


class RequestRejectedError(ValueError):
    """A request this engine can never serve (empty, too long, or too big for the KV cache).

    The engine reports it for that request only; other requests go on."""


class Scheduler:
    def __init__(self, config: SchedulerConfig) -> None:
        self.config = config
        args = (config.num_blocks, config.block_size, config.enable_prefix_caching)
        self.block_manager = (
            BlockManager(*args) if config.speed is None else SpeedBlockManager(config.speed, *args)
        )
        self.state = SchedulerState(config, self.block_manager)
        self.policy = POLICIES[config.scheduling_policy]()  # the name is validated by SchedulerConfig
        self._live: dict[int, Sequence] = {}  # seq_id -> waiting, running or reserved sequence

    # ---- queue state -----------------------------------------------------------------------

    @property
    def waiting(self) -> list[Sequence]:
        return list(self.state.waiting)

    @property
    def running(self) -> list[Sequence]:
        return list(self.state.running)

    @property
    def num_waiting(self) -> int:
        return len(self.state.waiting)

    @property
    def num_running(self) -> int:
        return len(self.state.running)

    @property
    def num_reserved(self) -> int:
        """Sequences holding blocks while their prompt KV loads (see `reserve`)."""
        return len(self.state.reserved)

    @property
    def num_preemptions(self) -> int:
        return self.state.num_preemptions

    @property
    def kv_usage(self) -> float:
        return self.block_manager.usage

    def has_unfinished(self) -> bool:
        return bool(self._live)

    def get(self, seq_id: int) -> Sequence | None:
        return self._live.get(seq_id)

    # ---- requests in -----------------------------------------------------------------------

    def add(self, seq: Sequence) -> None:
        """Queue `seq` (FCFS), or raise RequestRejectedError if it can never be served."""
        self.check_admissible(seq)
        if seq.seq_id in self._live:
            raise ValueError(f"sequence id {seq.seq_id} is already scheduled")
        if seq.status is not SequenceStatus.WAITING or seq.block_table:
            raise ValueError(f"only new sequences can be added, got {seq}")
        self._live[seq.seq_id] = seq
        self.state.waiting.append(seq)

    # ---- prompts computed elsewhere (disaggregated decode) ---------------------------------

    def reserve(self, seq: Sequence) -> bool:
        """Hold blocks for new `seq`'s prompt, whose KV a prefill pod computed: the caller
        writes it into `seq.block_table` (positions from `seq.num_cached_tokens` on; earlier
        ones are prefix-cache hits) and, with SPEED, `seq.upper_block_table`, then calls
        `activate`, or `finish` to give the blocks back. Until then `seq` is outside the
        running set, so no step schedules or preempts it, but its blocks count as used and it
        takes a seat under max_num_seqs. False, with nothing changed, when it does not fit now."""
        self.check_admissible(seq)
        if seq.seq_id in self._live or seq.status is not SequenceStatus.WAITING:
            raise ValueError(f"only new sequences can be reserved, got {seq}")
        if not self.state.has_seat() or not self.block_manager.can_allocate(seq):
            return False
        self.block_manager.allocate(seq)  # both SPEED tables; sets num_cached/computed = hit
        seq.status = SequenceStatus.RESERVED
        self._live[seq.seq_id] = seq
        self.state.reserved[seq.seq_id] = seq
        return True

    def activate(self, seq: Sequence) -> None:
        """Reserved `seq`'s prompt KV is written: it counts as computed and joins the running
        set (decoding once the caller appends the first token). Its full blocks enter the
        prefix cache only now, so no other prompt can hit blocks whose KV is not there yet."""
        if self.state.reserved.pop(seq.seq_id, None) is None:
            raise ValueError(f"{seq} is not reserved")
        seq.num_computed_tokens = seq.num_tokens
        seq.status = SequenceStatus.RUNNING
        self.block_manager.cache_blocks(seq)
        self.state.running.append(seq)

    def check_admissible(self, seq: Sequence) -> None:
        cfg = self.config
        n = seq.num_prompt_tokens
        if n == 0:
            raise RequestRejectedError("the prompt is empty; send at least one token")
        if n > cfg.max_model_len:
            raise RequestRejectedError(
                f"the prompt has {n} tokens but max_model_len is {cfg.max_model_len}; "
                "shorten the prompt"
            )
        # KV needed at the longest: prompt + max_tokens (at least one output), capped by
        # max_model_len where the engine stops the sequence anyway.
        max_tokens = seq.max_tokens
        total = min(n + max(max_tokens or 1, 1), cfg.max_model_len)
        blocks = -(-total // cfg.block_size)
        if blocks > cfg.num_blocks:
            limit = cfg.num_blocks * cfg.block_size
            outputs = "1 output token" if max_tokens is None else f"max_tokens={max_tokens}"
            raise RequestRejectedError(
                f"the request needs KV for {total} tokens ({n} prompt tokens + {outputs}) = "
                f"{blocks} blocks of {cfg.block_size}, but the whole KV cache has "
                f"{cfg.num_blocks} blocks ({limit} tokens); shorten the prompt or lower max_tokens"
            )
        if isinstance(self.block_manager, SpeedBlockManager):
            reason = self.block_manager.upper_shortfall(seq, total)
            if reason is not None:
                raise RequestRejectedError(reason)

    # ---- steps -----------------------------------------------------------------------------

    def schedule(self) -> SchedulerOutput:
        return self.policy.schedule(self.state)

    def postprocess(self, out: SchedulerOutput, sampled: dict[int, int]) -> list[Sequence]:
        """Apply a finished step: advance each chunk's sequence, cache its newly full blocks,
        append the sampled token where the chunk samples. Returns the sequences that got a new
        token (the engine checks stop rules on them). Sequences finished or aborted since
        `schedule()` are skipped. A layered cohort's chunks count only after their last group
        (`out.computed_chunks`)."""
        live = [c for c in out.computed_chunks if c.seq.status is SequenceStatus.RUNNING]
        missing = [c.seq.seq_id for c in live if c.samples and c.seq.seq_id not in sampled]
        if missing:  # checked before any state changes, so the step can be retried
            raise KeyError(f"no sampled token for sequence(s) {missing}, whose chunks sample")
        grew: list[Sequence] = []
        for chunk in live:
            seq = chunk.seq
            if seq.num_computed_tokens != chunk.start:
                raise RuntimeError(f"chunk starts at {chunk.start} but {seq} moved on")
            samples = chunk.samples  # before the new token changes num_tokens
            seq.num_computed_tokens += chunk.num_tokens
            self.block_manager.cache_blocks(seq)
            if samples:
                seq.append_token(sampled[seq.seq_id])
                grew.append(seq)
        return grew

    def finish(self, seq: Sequence, reason: str) -> None:
        """Stop `seq` (waiting, running or reserved) for `reason` (see FINISH_REASONS) and
        return its blocks."""
        if reason not in FINISH_REASONS:
            raise ValueError(
                f"finish reason must be one of {sorted(FINISH_REASONS)}, got {reason!r}"
            )
        if self._live.pop(seq.seq_id, None) is None:
            raise ValueError(f"{seq} is not waiting, running or reserved")
        if seq.status is SequenceStatus.RUNNING:
            self.state.running.remove(seq)
        elif seq.status is SequenceStatus.RESERVED:
            del self.state.reserved[seq.seq_id]
        else:
            self.state.waiting.remove(seq)
        self.block_manager.free(seq)
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason

    def abort(self, seq_id: int) -> Sequence | None:
        """Finish a waiting, running or reserved request with reason "abort". Returns it, or
        None when it is unknown or already finished (a client may cancel after the last
        token)."""
        seq = self._live.get(seq_id)
        if seq is not None:
            self.finish(seq, "abort")
        return seq
