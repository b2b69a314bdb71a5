"""Randomized (seeded) run of the scheduler against a fake model that really uses the KV cache.

The fake model writes, for each computed position p, the value v_p = hash((v_{p-1}, token_p))
into p's cache slot, reading v_{p-1} back from the cache; a sampled token is v_last % VOCAB. So
a wrong block table, a prefix hit on the wrong content, or a write into a shared block changes
the tokens. Every request must produce exactly what it produces when run alone, while the
schedule keeps its invariants step after step (budget, max_num_seqs, ref counts, ownership).
"""

import random
from types import SimpleNamespace

import pytest

from lamina_engine.core.scheduler import RequestRejectedError, Scheduler
from lamina_engine.core.scheduler_config import SchedulerConfig
from lamina_engine.sequence import Sequence, SequenceStatus

VOCAB = 50
ROOT = 12345  # v_{-1}


def solo_output(prompt: list[int], max_tokens: int) -> list[int]:
    v, tokens, out = ROOT, list(prompt), []
    for i in range(len(prompt) + max_tokens - 1):
        v = hash((v, tokens[i]))
        if i >= len(prompt) - 1:
            out.append(v % VOCAB)
            tokens.append(out[-1])
    return out


class FakeModel:
    def __init__(self, block_size: int):
        self.bs = block_size
        self.kv: dict[int, int] = {}  # cache slot -> value

    def slot(self, seq: Sequence, p: int) -> int:
        return seq.block_table[p // self.bs] * self.bs + p % self.bs

    def run(self, out, ref_counts) -> dict[int, int]:
        sampled = {}
        for c in out.chunks:
            seq = c.seq
            v = ROOT if c.start == 0 else self.kv[self.slot(seq, c.start - 1)]
            for p in range(c.start, c.start + c.num_tokens):
                block = seq.block_table[p // self.bs]
                assert ref_counts[block] == 1, (
                    f"{seq} writes position {p} into shared block {block}"
                )
                v = hash((v, seq.all_token_ids[p]))
                self.kv[self.slot(seq, p)] = v
            if c.samples:
                sampled[seq.seq_id] = v % VOCAB
        return sampled


def check_blocks(sched: Scheduler) -> None:
    bm, bs = sched.block_manager, sched.config.block_size
    owners: dict[int, list[tuple[Sequence, int]]] = {}
    for seq in sched.running:
        assert len(set(seq.block_table)) == len(seq.block_table), seq
        assert len(seq.block_table) * bs >= seq.num_computed_tokens
        for i, block in enumerate(seq.block_table):
            owners.setdefault(block, []).append((seq, i))
    for seq in sched.waiting:
        assert seq.block_table == [] and seq.num_computed_tokens == 0
    for block in range(bm.num_blocks):
        assert bm.ref_counts[block] == len(owners.get(block, [])), block
    for block, users in owners.items():
        if len(users) > 1:  # only cached, full, identical-prefix blocks are shared
            assert bm.block_hash[block] is not None
            assert len({i for _, i in users}) == 1
            prefixes = {tuple(s.all_token_ids[: (i + 1) * bs]) for s, i in users}
            assert len(prefixes) == 1, f"block {block} shared by different prefixes"
    free = sum(1 for r in bm.ref_counts if r == 0)
    assert bm.num_free_blocks == free
    assert bm.num_free_blocks + len(owners) == bm.num_blocks


@pytest.mark.parametrize("seed", range(6))
def test_random_workload_keeps_invariants_and_matches_solo_runs(seed):
    rng = random.Random(seed)
    bs = rng.choice([2, 4])
    cfg = SchedulerConfig(
        num_blocks=rng.randint(12, 24) * 2 // bs,  # 24 to 48 token slots: preemption happens
        block_size=bs,
        max_model_len=40,
        max_num_seqs=rng.randint(2, 6),
        max_num_batched_tokens=rng.choice([8, 12, 16]),
    )
    sched, model = Scheduler(cfg), FakeModel(bs)
    prefixes = [[rng.randrange(VOCAB) for _ in range(rng.randint(0, 12))] for _ in range(3)]
    pending, expected, done, aborted = 40, {}, {}, set()
    max_hit, steps = 0, 0

    while pending or sched.has_unfinished():
        steps += 1
        assert steps < 3000, "the scheduler stopped making progress"
        for _ in range(rng.choice([0, 0, 1, 2])):
            if pending:
                pending -= 1
                prompt = rng.choice(prefixes) + [
                    rng.randrange(VOCAB) for _ in range(rng.randint(1, 14))
                ]
                max_tokens = rng.randint(1, 10)
                seq = Sequence(prompt, SimpleNamespace(max_tokens=max_tokens))
                try:
                    sched.add(seq)
                except RequestRejectedError:  # only if it could never fit the whole cache
                    assert -(-(len(prompt) + max_tokens) // bs) > cfg.num_blocks
                    continue
                expected[seq.seq_id] = solo_output(prompt, max_tokens)
        if rng.random() < 0.02 and sched.has_unfinished():
            victim = rng.choice(sched.running + sched.waiting)
            sched.abort(victim.seq_id)
            aborted.add(victim.seq_id)

        running_before = {s.seq_id for s in sched.running}
        out = sched.schedule()
        assert out.num_batched_tokens == sum(c.num_tokens for c in out.chunks)
        assert out.num_batched_tokens <= cfg.max_num_batched_tokens
        assert sched.num_running <= cfg.max_num_seqs
        for seq in out.preempted:
            assert seq.status is SequenceStatus.WAITING and seq not in sched.running
        decode_flags = [
            c.seq.seq_id in running_before and c.num_tokens == 1 and c.samples for c in out.chunks
        ]
        assert decode_flags == sorted(decode_flags, reverse=True), "decodes come first"
        scheduled = {c.seq.seq_id for c in out.chunks}
        for seq in sched.running:  # every running decode got its token (tau >= max_num_seqs)
            if seq.seq_id in running_before and seq.num_uncomputed_tokens == 1:
                assert seq.seq_id in scheduled
        for c in out.chunks:
            assert c.start == c.seq.num_computed_tokens and c.seq.status is SequenceStatus.RUNNING
            assert len(c.seq.block_table) * bs >= c.start + c.num_tokens
            max_hit = max(max_hit, c.seq.num_cached_tokens)
        check_blocks(sched)

        sampled = model.run(out, sched.block_manager.ref_counts)
        for seq in sched.postprocess(out, sampled):
            if seq.num_output_tokens == seq.max_tokens:
                sched.finish(seq, "length")
                done[seq.seq_id] = seq.output_token_ids
        check_blocks(sched)

    assert sched.block_manager.num_free_blocks == cfg.num_blocks
    assert set(done) | aborted == set(expected)
    for seq_id, tokens in done.items():
        assert tokens == expected[seq_id], seq_id
    assert max_hit > 0, "the workload should exercise prefix hits"
    assert sched.num_preemptions > 0, "the workload should exercise preemption"


def test_preempted_sequences_recompute_their_solo_tokens():
    # A small fixed workload that runs out of blocks: the preempted recompute and still match.
    cfg = SchedulerConfig(
        num_blocks=8, block_size=2, max_model_len=16, max_num_seqs=4, max_num_batched_tokens=8
    )
    sched, model = Scheduler(cfg), FakeModel(2)
    rng = random.Random(0)
    seqs = [
        Sequence([rng.randrange(VOCAB) for _ in range(5)], SimpleNamespace(max_tokens=8))
        for _ in range(6)
    ]
    for s in seqs:
        sched.add(s)
    while sched.has_unfinished():
        out = sched.schedule()
        for seq in sched.postprocess(out, model.run(out, sched.block_manager.ref_counts)):
            if seq.num_output_tokens == 8:
                sched.finish(seq, "length")
        check_blocks(sched)
    assert sched.num_preemptions > 0
    for s in seqs:
        assert s.output_token_ids == solo_output(s.prompt_token_ids, 8)
