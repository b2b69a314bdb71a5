"""Scheduler + chunked policy: batch composition step by step, preemption, rejection, abort."""

from types import SimpleNamespace

import pytest

from lamina_engine.core.scheduler import POLICIES, RequestRejectedError, Scheduler
from lamina_engine.core.scheduler_config import POLICY_NAMES, SchedulerConfig
from lamina_engine.sequence import Sequence, SequenceStatus


def make(num_blocks=64, **kw) -> Scheduler:
    kw.setdefault("block_size", 4)
    kw.setdefault("max_model_len", 256)
    return Scheduler(SchedulerConfig(num_blocks=num_blocks, **kw))


def seq(seq_id: int, n: int, max_tokens: int = 4) -> Sequence:
    # distinct tokens per sequence, so no prefix hits unless a test wants them
    return Sequence(
        range(seq_id * 1000, seq_id * 1000 + n),
        SimpleNamespace(max_tokens=max_tokens),
        seq_id=seq_id,
    )


def step(sched: Scheduler, token: int = 7):
    """One engine step; returns [(seq_id, start, num_tokens, samples)] and the output."""
    out = sched.schedule()
    got = [(c.seq.seq_id, c.start, c.num_tokens, c.samples) for c in out.chunks]
    assert out.num_batched_tokens == sum(c.num_tokens for c in out.chunks)
    sched.postprocess(out, {c.seq.seq_id: token for c in out.chunks if c.samples})
    return got, out


def test_every_policy_name_the_config_accepts_has_a_policy():
    # scheduler_config.py lists the names without importing the policies (no import cycle)
    assert sorted(POLICIES) == sorted(POLICY_NAMES)
    for name in POLICY_NAMES:
        sched = make(scheduling_policy=name, num_layers=2)
        assert sched.policy.name == name


def test_config_is_validated_with_actionable_messages():
    with pytest.raises(
        ValueError,
        match=r"unknown scheduling policy 'fifo'; choose one of \['chunked', 'layered'\]",
    ):
        SchedulerConfig(num_blocks=8, max_model_len=64, scheduling_policy="fifo")
    with pytest.raises(
        ValueError, match=r"max_num_batched_tokens \(8\) must be >= max_num_seqs \(16\)"
    ):
        SchedulerConfig(num_blocks=8, max_model_len=64, max_num_batched_tokens=8, max_num_seqs=16)
    with pytest.raises(ValueError, match="num_blocks must be >= 1"):
        SchedulerConfig(num_blocks=0, max_model_len=64)
    assert SchedulerConfig(num_blocks=8, max_model_len=64).max_num_batched_tokens == 512


def test_chunked_batches_decodes_then_partial_prefills_then_admissions():
    sched = make(max_num_batched_tokens=8, max_num_seqs=4)
    for s in (seq(0, 3), seq(1, 20), seq(2, 4)):
        sched.add(s)

    # admissions FCFS: A whole (samples), B's first chunk takes the rest of the budget
    assert step(sched)[0] == [(0, 0, 3, True), (1, 0, 5, False)]
    # A decodes first; B's partial prefill gets what is left; C waits for budget
    assert step(sched)[0] == [(0, 3, 1, True), (1, 5, 7, False)]
    assert step(sched)[0] == [(0, 4, 1, True), (1, 12, 7, False)]
    # B has one token left: it is just another decode now; C is admitted behind it
    assert step(sched)[0] == [(0, 5, 1, True), (1, 19, 1, True), (2, 0, 4, True)]
    assert step(sched)[0] == [(0, 6, 1, True), (1, 20, 1, True), (2, 4, 1, True)]
    assert sched.num_preemptions == 0


def test_admission_respects_max_num_seqs_and_budget():
    sched = make(max_num_batched_tokens=8, max_num_seqs=3)
    a, b, c, d = seq(0, 10), seq(1, 6), seq(2, 5), seq(3, 3)
    for s in (a, b, c, d):
        sched.add(s)

    assert step(sched)[0] == [(0, 0, 8, False)]
    assert step(sched)[0] == [(0, 8, 2, True), (1, 0, 6, True)]
    # one token of budget is left after C, but three sequences already run
    got, out = step(sched)
    assert got == [(0, 10, 1, True), (1, 6, 1, True), (2, 0, 5, True)]
    assert out.num_batched_tokens == 7
    assert step(sched)[0] == [(0, 11, 1, True), (1, 7, 1, True), (2, 5, 1, True)]
    assert [s.seq_id for s in sched.waiting] == [3]

    sched.finish(b, "stop")
    assert b.status is SequenceStatus.FINISHED and b.finish_reason == "stop"
    assert step(sched)[0] == [(0, 12, 1, True), (2, 6, 1, True), (3, 0, 3, True)]


def test_admission_waits_until_the_whole_prompt_fits_in_kv():
    sched = make(num_blocks=4, max_num_batched_tokens=32, max_num_seqs=4)
    a, b, c = seq(0, 8), seq(1, 12), seq(2, 2)
    for s in (a, b, c):
        sched.add(s)
    # A takes 2 blocks; B needs 3 of the 2 left; C must not overtake B (FCFS)
    assert step(sched)[0] == [(0, 0, 8, True)]
    assert a.block_table == [0, 1]
    assert [s.seq_id for s in sched.waiting] == [1, 2]
    sched.finish(a, "length")
    # B now fits (two free blocks + A's cached block 1, evicted); C comes right behind it
    assert step(sched)[0] == [(1, 0, 12, True), (2, 0, 2, True)]
    assert (b.block_table, c.block_table) == ([2, 3, 1], [0])


def test_preemption_from_the_tail_then_recompute():
    sched = make(num_blocks=4, max_num_batched_tokens=16, max_num_seqs=4)
    a, b, c = seq(0, 4), seq(1, 4), seq(2, 4)
    for s in (a, b, c):
        sched.add(s)
    assert step(sched, token=11)[0] == [(0, 0, 4, True), (1, 0, 4, True), (2, 0, 4, True)]
    assert (a.block_table, b.block_table, c.block_table) == ([0], [1], [2])

    # A's decode takes the last free block; B's needs one more: the newest (C) is preempted
    got, out = step(sched, token=12)
    assert got == [(0, 4, 1, True), (1, 4, 1, True)]
    assert out.preempted == [c]
    assert sched.num_preemptions == 1
    assert (a.block_table, b.block_table) == ([0, 3], [1, 2])  # B evicted C's cached block
    assert c.status is SequenceStatus.WAITING and c.block_table == []
    assert c.num_computed_tokens == 0 and c.output_token_ids == [11]  # keeps its output
    assert sched.waiting == [c]

    # no room to readmit C (2 blocks for 5 tokens) while A and B run
    assert step(sched, token=13)[0] == [(0, 5, 1, True), (1, 5, 1, True)]
    sched.finish(a, "length")  # frees 0 (cached: evictable) and 3 (partial: plain free)
    # C recomputes prompt + its earlier output in one chunk and samples its second token
    got, out = step(sched, token=14)
    assert got == [(1, 6, 1, True), (2, 0, 5, True)]
    assert c.block_table == [3, 0]
    assert c.output_token_ids == [11, 14]
    assert out.preempted == []


def test_a_decode_with_no_slot_and_nothing_behind_it_preempts_itself():
    sched = make(num_blocks=3, max_num_batched_tokens=16, max_num_seqs=4)
    a, b = seq(0, 4), seq(1, 4)
    sched.add(a)
    sched.add(b)
    step(sched)
    got, out = step(sched)
    # A takes the last free block; B is the tail and finds no slot: it preempts itself, and
    # nothing is admitted in a step that preempted
    assert got == [(0, 4, 1, True)]
    assert out.preempted == [b] and sched.waiting == [b]


def test_readmission_after_preemption_reuses_its_cached_prefix():
    sched = make(num_blocks=3, max_num_batched_tokens=16, max_num_seqs=4)
    a, b = seq(0, 4), seq(1, 8)
    sched.add(a)
    sched.add(b)
    step(sched)  # A [0], B [1, 2]; B's blocks are full and cached
    got, out = step(sched)  # A needs a block: B (the tail) is preempted
    assert got == [(0, 4, 1, True)] and out.preempted == [b]
    assert a.block_table == [0, 2]  # the evicted block is B's tail block, freed first
    sched.finish(a, "stop")
    got, _ = step(sched)
    # B's first block survived in the cache: only positions 4..8 are recomputed
    assert got == [(1, 4, 5, True)]
    assert b.num_cached_tokens == 4 and b.block_table[0] == 1


def test_impossible_requests_are_rejected_and_others_go_on():
    sched = make(num_blocks=4, max_model_len=32, max_num_batched_tokens=16, max_num_seqs=4)
    ok = seq(0, 4, max_tokens=2)
    sched.add(ok)
    with pytest.raises(RequestRejectedError, match="the prompt is empty"):
        sched.add(Sequence([], seq_id=1))
    with pytest.raises(RequestRejectedError, match="has 33 tokens but max_model_len is 32"):
        sched.add(seq(2, 33))
    msg = (
        r"needs KV for 20 tokens \(12 prompt tokens \+ max_tokens=8\) = 5 blocks of 4, "
        r"but the whole KV cache has 4 blocks \(16 tokens\)"
    )
    with pytest.raises(RequestRejectedError, match=msg):
        sched.add(seq(3, 12, max_tokens=8))
    # without max_tokens, at least one output token must fit
    with pytest.raises(
        RequestRejectedError, match=r"needs KV for 17 tokens \(16 prompt tokens \+ 1 output"
    ):
        sched.add(Sequence(range(16), None, seq_id=4))
    # max_tokens beyond max_model_len counts only up to max_model_len (32 tokens = 8 blocks)
    with pytest.raises(RequestRejectedError, match="needs KV for 32 tokens"):
        sched.add(seq(5, 4, max_tokens=1000))
    assert isinstance(RequestRejectedError("x"), ValueError)

    assert sched.num_waiting == 1
    assert step(sched)[0] == [(0, 0, 4, True)]


def test_abort_waiting_running_and_in_flight():
    sched = make(max_num_batched_tokens=8, max_num_seqs=4)
    a, b, c = seq(0, 4), seq(1, 4), seq(2, 20)
    for s in (a, b, c):
        sched.add(s)
    out = sched.schedule()  # A 4, B 4; C waits for budget
    assert sched.abort(2) is c
    assert c.finish_reason == "abort" and sched.waiting == []

    # B aborted while its chunk is in flight: postprocess skips it and frees nothing twice
    sched.abort(1)
    sched.postprocess(out, {0: 5, 1: 5})
    assert b.output_token_ids == [] and b.block_table == []
    assert a.output_token_ids == [5]
    assert sched.block_manager.num_used_blocks == 1  # only A's block

    assert sched.abort(1) is None  # already finished: a late cancel is harmless
    assert sched.abort(12345) is None
    sched.abort(0)
    assert not sched.has_unfinished()
    assert sched.block_manager.num_used_blocks == 0


def test_misuse_is_reported():
    sched = make()
    a = seq(0, 4)
    sched.add(a)
    with pytest.raises(ValueError, match="already scheduled"):
        sched.add(a)
    out = sched.schedule()
    with pytest.raises(KeyError, match=r"no sampled token for sequence\(s\) \[0\]"):
        sched.postprocess(out, {})
    with pytest.raises(ValueError, match="finish reason must be one of"):
        sched.finish(a, "done")
