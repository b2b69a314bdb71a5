"""Scheduler.reserve / activate: a prompt whose KV is loaded from a prefill pod holds its blocks
outside the running set (never scheduled, never preempted, counted as used), enters the prefix
cache only once activated, and gives everything back when finished. No torch."""

from types import SimpleNamespace

import pytest

from lamina_engine.core.scheduler import RequestRejectedError, Scheduler
from lamina_engine.core.scheduler_config import SchedulerConfig
from lamina_engine.core.speed_layout import SpeedLayout
from lamina_engine.sequence import Sequence, SequenceStatus


def make(num_blocks=16, layout: SpeedLayout | None = None, **kw) -> Scheduler:
    kw.setdefault("block_size", 4)
    kw.setdefault("max_model_len", 64)
    return Scheduler(SchedulerConfig(num_blocks=num_blocks, speed=layout, **kw))


def seq(seq_id: int, tokens, max_tokens: int = 4) -> Sequence:
    return Sequence(tokens, SimpleNamespace(max_tokens=max_tokens), seq_id=seq_id)


def run(sched: Scheduler, token: int = 7):
    """One step; returns the ids of the sequences it ran and its output."""
    out = sched.schedule()
    sched.postprocess(out, {c.seq.seq_id: token for c in out.computed_chunks if c.samples})
    return [c.seq.seq_id for c in out.scheduled_chunks], out


@pytest.mark.parametrize("policy", ["chunked", "layered"])
def test_a_reserved_sequence_is_never_scheduled_or_preempted(policy):
    # 10 blocks of 4: A reserves 4 (13 tokens), B runs a 9-token prompt and grows until the
    # pool is dry; B, not A, is the one preempted, and A's blocks stay exactly as they were.
    sched = make(
        num_blocks=10, scheduling_policy=policy, num_layers=4, max_num_seqs=4, max_num_batched_tokens=16
    )
    a, b = seq(1, range(13)), seq(2, range(100, 109), max_tokens=30)
    assert sched.reserve(a)
    table = list(a.block_table)
    assert (a.status, len(table), sched.num_reserved, sched.num_running) == (
        SequenceStatus.RESERVED, 4, 1, 0,
    )  # fmt: skip
    assert sched.block_manager.num_used_blocks == 4 and sched.kv_usage == 0.4
    sched.add(b)
    preempted = []
    for _ in range(40):
        ran, out = run(sched)
        assert 1 not in ran
        preempted += [s.seq_id for s in out.preempted]
        if preempted:
            break
    assert preempted == [2]  # 9 + outputs outgrew the 6 blocks A left
    assert a.block_table == table and a.status is SequenceStatus.RESERVED
    sched.finish(a, "abort")  # releasing A lets B come back
    assert sched.block_manager.num_used_blocks == 0 and sched.num_reserved == 0
    assert 2 in run(sched)[0]


def test_activate_joins_the_running_set_and_caches_blocks_only_then():
    sched = make()
    prompt = list(range(9))  # two full blocks of 4 + one token
    a = seq(1, prompt)
    assert sched.reserve(a) and a.num_cached_tokens == 0
    # reserved and even fully written, its blocks serve no hits: nothing says they are written
    assert sched.block_manager.find_cached_prefix(prompt) == []
    sched.activate(a)
    assert a.status is SequenceStatus.RUNNING and a.num_computed_tokens == 9
    assert sched.block_manager.find_cached_prefix(prompt) == a.block_table[:2]
    a.append_token(42)  # the engine appends the shipped first token: a plain decode now
    ran, out = run(sched)
    assert ran == [1] and out.chunks[0].start == 9 and out.chunks[0].num_tokens == 1
    with pytest.raises(ValueError, match="is not reserved"):
        sched.activate(a)
    # a later reservation of the same prompt starts from the cached blocks
    b = seq(2, prompt)
    assert sched.reserve(b) and b.num_cached_tokens == 8 and b.num_computed_tokens == 8
    assert b.block_table[:2] == a.block_table[:2]


def test_reserve_refuses_what_does_not_fit_now_and_changes_nothing():
    sched = make(num_blocks=6, max_num_seqs=2, max_num_batched_tokens=8)
    assert sched.reserve(seq(1, range(16)))  # 4 blocks
    late = seq(2, range(50, 62))  # 3 blocks, 2 free
    assert not sched.reserve(late)
    assert late.block_table == [] and late.status is SequenceStatus.WAITING
    assert sched.block_manager.num_used_blocks == 4 and sched.num_reserved == 1
    # a reservation takes a running seat: with max_num_seqs = 2 a third sequence must wait
    assert sched.reserve(seq(3, range(80, 84)))
    sched.add(seq(4, range(90, 91)))
    assert run(sched)[0] == []
    with pytest.raises(RequestRejectedError, match="whole KV cache has 6 blocks"):
        sched.reserve(seq(5, range(200, 230)))
    with pytest.raises(ValueError, match="only new sequences can be reserved"):
        sched.reserve(sched.get(1))


def test_speed_reservation_covers_and_frees_both_tables():
    layout = SpeedLayout(num_layers=4, prefill_layers=3, anchors=1)
    sched = make(num_blocks=16, layout=layout)
    a = seq(1, range(10))  # full-depth prompt tokens: anchor 0 and the last, 2 upper slots
    assert sched.reserve(a)
    assert (len(a.block_table), len(a.upper_block_table)) == (3, 1)
    bm = sched.block_manager
    assert (bm.num_used_blocks, bm.upper.num_used_blocks) == (3, 1)
    sched.finish(a, "abort")
    assert (bm.num_used_blocks, bm.upper.num_used_blocks) == (0, 0)
    assert a.status is SequenceStatus.FINISHED and sched.get(1) is None
