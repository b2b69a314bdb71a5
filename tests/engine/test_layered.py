"""Layered prefill: group choice, exact schedules, and tokens equal to chunked and to HF."""

from __future__ import annotations

import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from lamina_engine import LLM, SamplingParams
from lamina_engine.config import EngineConfig
from lamina_engine.core.layered import choose_num_groups, split_layers
from lamina_engine.core.scheduler import Scheduler
from lamina_engine.core.scheduler_config import SchedulerConfig
from lamina_engine.sequence import Sequence, SequenceStatus

FAMILIES = ("qwen3_moe", "mixtral", "olmoe", "llama", "qwen3")


def layered(num_blocks=64, **kw) -> Scheduler:
    kw.setdefault("block_size", 4)
    kw.setdefault("max_model_len", 256)
    kw.setdefault("layered_group_tokens", 4)
    return Scheduler(SchedulerConfig(num_blocks=num_blocks, scheduling_policy="layered", **kw))


def seq(seq_id: int, n: int, max_tokens: int = 8) -> Sequence:
    return Sequence(
        range(seq_id * 1000, seq_id * 1000 + n),
        SimpleNamespace(max_tokens=max_tokens),
        seq_id=seq_id,
    )


def step(sched: Scheduler, token: int = 7):
    """One step: (decode chunks, cohort summary or None, output)."""
    out = sched.schedule()
    dec = [(c.seq.seq_id, c.start, c.num_tokens) for c in out.chunks]
    co = out.cohort
    summary = None
    if co is not None:
        chunks = [(c.seq.seq_id, c.start, c.num_tokens, c.samples) for c in co.chunks]
        summary = (co.group, co.num_groups, (co.layer_start, co.layer_end), chunks)
    sched.postprocess(out, {c.seq.seq_id: token for c in out.computed_chunks if c.samples})
    return dec, summary, out


def test_groups_follow_numpy_array_split_and_the_bucket_rule():
    for layers in range(1, 50):
        for g in range(1, layers + 1):
            want = [(int(a[0]), int(a[-1]) + 1) for a in np.array_split(np.arange(layers), g)]
            assert split_layers(layers, g) == want
    # more groups than layers: one layer each (KV shipping asks for that on small models)
    assert split_layers(3, 4) == [(0, 1), (1, 2), (2, 3)]
    with pytest.raises(ValueError, match="cannot split 3 layers into 0 groups"):
        split_layers(3, 0)
    # u = 512: T <= 512, 1024, 2048, 4096 -> 1, 2, 4, 8, else Gmax; capped by Gmax and L
    got = [choose_num_groups(t, 512, 16, 48) for t in (1, 512, 513, 1024, 2048, 4096, 4097)]
    assert got == [1, 1, 2, 2, 4, 8, 16]
    assert choose_num_groups(9000, 512, 16, 5) == 5  # never more groups than layers
    assert choose_num_groups(3000, 512, 3, 48) == 3  # never more than Gmax


def test_layered_config_is_validated():
    with pytest.raises(ValueError, match="set num_layers"):
        SchedulerConfig(num_blocks=8, max_model_len=64, scheduling_policy="layered")
    with pytest.raises(ValueError, match="layered_budget must be >= 1"):
        SchedulerConfig(num_blocks=8, max_model_len=64, layered_budget=0)
    with pytest.raises(ValueError, match="layered_max_groups"):
        EngineConfig(model="x", layered_max_groups=0)
    cfg = EngineConfig(model="x")
    assert (cfg.layered_budget, cfg.layered_max_groups, cfg.layered_group_tokens) == (8192, 16, 512)


def test_one_cohort_at_a_time_partials_first_and_groups_advance():
    sched = layered(num_layers=5, layered_budget=12, layered_max_groups=4)
    a, b, c = seq(0, 6), seq(1, 10), seq(2, 3)
    for s in (a, b, c):
        sched.add(s)
    # A whole + B's first 6 tokens fill B = 12; T = 12 <= 4u -> G = 4 groups of [2, 1, 1, 1]
    cohort = [(0, 0, 6, True), (1, 0, 6, False)]
    assert step(sched)[:2] == ([], (0, 4, (0, 2), cohort))
    assert a.block_table and len(b.block_table) == 3  # all of B's KV allocated at admission
    assert a.num_computed_tokens == 0 and sched.waiting == [c]  # C waits for the next cohort
    assert step(sched)[:2] == ([], (1, 4, (2, 3), cohort))
    assert step(sched)[:2] == ([], (2, 4, (3, 4), cohort))
    assert a.num_computed_tokens == 0 and a.output_token_ids == []  # computed only at the end
    dec, co, out = step(sched)
    assert (dec, co) == ([], (3, 4, (4, 5), cohort)) and out.num_batched_tokens == 12
    assert (a.num_computed_tokens, a.output_token_ids) == (6, [7])
    assert (b.num_computed_tokens, b.output_token_ids) == (6, [])  # partial: no sample
    # A decodes; the next cohort is B's rest first, then C: T = 7 <= 2u -> G = 2
    cohort = [(1, 6, 4, True), (2, 0, 3, True)]
    dec, co, out = step(sched)
    assert (dec, co) == ([(0, 6, 1)], (0, 2, (0, 3), cohort)) and out.num_batched_tokens == 8
    assert step(sched)[:2] == ([(0, 7, 1)], (1, 2, (3, 5), cohort))
    assert step(sched)[:2] == ([(0, 8, 1), (1, 10, 1), (2, 3, 1)], None)
    assert b.output_token_ids == c.output_token_ids == [7, 7]


def test_new_requests_need_all_their_blocks_and_max_num_seqs():
    sched = layered(num_blocks=6, num_layers=2, max_num_seqs=2)
    a, b, c, d = seq(0, 8), seq(1, 18, max_tokens=2), seq(2, 4), seq(3, 2)
    for s in (a, b, c, d):
        sched.add(s)
    # B needs 5 blocks with 4 left after A: not admitted, and C may not overtake it (FCFS)
    assert step(sched)[1] == (0, 2, (0, 1), [(0, 0, 8, True)])
    assert sched.waiting == [b, c, d]
    step(sched)
    sched.finish(a, "stop")
    # B and C fit now; D would be a third running sequence (max_num_seqs = 2)
    assert step(sched)[1] == (0, 2, (0, 1), [(1, 0, 18, True), (2, 0, 4, True)])
    assert sched.waiting == [d]


def test_decode_preemption_spares_the_cohort_in_flight():
    sched = layered(num_blocks=5, num_layers=2, layered_group_tokens=2)
    a, b, c = seq(0, 3), seq(1, 3), seq(2, 8)
    sched.add(a)
    sched.add(b)
    step(sched)
    step(sched)  # A and B: 4 tokens each, one block each
    sched.add(c)
    dec, co, _ = step(sched)  # C takes 2 of the 3 free blocks; decodes fit their blocks
    assert dec == [(0, 3, 1), (1, 3, 1)] and co[:3] == (0, 2, (0, 1))
    # A takes the last free block; B needs one: the newest running sequence is C, but C is
    # mid-flight, so B (the tail of the decoding sequences) is preempted
    dec, co, out = step(sched)
    assert dec == [(0, 4, 1)] and out.preempted == [b]
    assert co == (1, 2, (1, 2), [(2, 0, 8, True)])
    assert b.status is SequenceStatus.WAITING and c.output_token_ids == [7]


def test_abort_of_a_cohort_member_mid_flight():
    sched = layered(num_layers=3, layered_group_tokens=2)
    a, b = seq(0, 5), seq(1, 3)
    sched.add(a)
    sched.add(b)
    assert step(sched)[1][:2] == (0, 3)  # T = 8 -> G = min(4, 3 layers)
    sched.abort(0)
    assert step(sched)[1] == (1, 3, (1, 2), [(1, 0, 3, True)])
    assert step(sched)[1] == (2, 3, (2, 3), [(1, 0, 3, True)])
    assert b.output_token_ids == [7] and a.block_table == []
    sched.abort(1)
    assert step(sched)[1] is None and not sched.has_unfinished()


def hf_greedy(hf, prompt: list[int], n: int) -> list[int]:
    out = hf.generate(
        torch.tensor([prompt]), max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0
    )
    return out[0, len(prompt) :].tolist()


PROMPTS = [[3, 17, 42], list(range(10, 40)), [5] * 11, [7, 8, 9, 10, 11, 12, 1, 2], [9, 4]]
MAX_TOKENS = [12, 5, 9, 14, 7]  # staggered: cohorts keep arriving while others decode


@pytest.mark.parametrize("family", FAMILIES)
def test_layered_matches_chunked_and_hf(family, tmp_path, make_checkpoint, hf_model):
    path = make_checkpoint(tmp_path, family)
    params = [SamplingParams(temperature=0, max_tokens=n, ignore_eos=True) for n in MAX_TOKENS]
    common = dict(device="cpu", block_size=4, max_num_seqs=3, max_num_batched_tokens=8)
    chunked = LLM(str(path), **common).generate(PROMPTS, params)
    # B = 16 splits the 30-token prompt over cohorts; u = 4 gives G = 2..Gmax on tiny cohorts
    llm = LLM(
        str(path), scheduling_policy="layered", layered_budget=16, layered_group_tokens=4, **common
    )
    seen = []  # (decode tokens, cohort groups) per step
    schedule = llm.engine.scheduler.schedule

    def spy():
        out = schedule()
        seen.append((len(out.chunks), out.cohort.num_groups if out.cohort else 0))
        return out

    llm.engine.scheduler.schedule = spy
    outs = llm.generate(PROMPTS, params)
    hf = hf_model(path)
    for prompt, n, ours, base in zip(PROMPTS, MAX_TOKENS, outs, chunked):
        assert ours.token_ids == base.token_ids == hf_greedy(hf, prompt, n), prompt
    assert llm.stats.prefill_tokens == sum(map(len, PROMPTS))  # once per token, not per group
    assert llm.stats.decode_tokens == sum(MAX_TOKENS) - len(PROMPTS)
    num_layers = llm.engine.model.num_layers
    assert max(g for _, g in seen) == min(4, num_layers)  # 16 tokens = 4u -> G = 4
    assert sum(1 for d, g in seen if d and g) >= 5  # decodes and a cohort share many steps
    assert llm.engine.runner.layer_groups_run == sum(1 for _, g in seen if g)


def test_preemption_and_prefix_cache_under_layered(tmp_path, make_checkpoint):
    path = make_checkpoint(tmp_path, "qwen3_moe")
    params = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)
    prompts = [list(range(1, 25)) + [i] for i in range(6)]  # shared 24-token prefix
    roomy = LLM(str(path), device="cpu", block_size=4, enable_prefix_caching=False)
    ref = [o.token_ids for o in roomy.generate(prompts, params)]
    tight = LLM(
        str(path),
        device="cpu",
        scheduling_policy="layered",
        block_size=4,
        num_gpu_blocks=30,
        layered_budget=32,
        layered_group_tokens=8,
    )
    outs = tight.generate(prompts, params)
    assert [o.token_ids for o in outs] == ref
    assert tight.stats.preemptions > 0
    assert any(o.num_cached_tokens > 0 for o in outs)


def test_abort_mid_flight_leaves_the_rest_of_the_cohort_intact(tmp_path, make_checkpoint):
    path = make_checkpoint(tmp_path, "olmoe")
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    prompts = [list(range(1, 12)), list(range(20, 29)), [4, 5, 6]]
    ref = LLM(str(path), device="cpu").generate(prompts, params)
    llm = LLM(str(path), device="cpu", scheduling_policy="layered", layered_group_tokens=8)
    engine = llm.engine
    outs = [engine.add_request(str(i), p, params) for i, p in enumerate(prompts)]
    engine.step()  # group 0 of 3 (23 tokens > 2u)
    engine.abort("1")
    while engine.has_unfinished():
        engine.step()
    assert outs[1].finish_reason == "abort" and outs[1].token_ids == []
    assert [outs[0].token_ids, outs[2].token_ids] == [ref[0].token_ids, ref[2].token_ids]


def test_layered_loads_fewer_expert_bytes_than_small_chunks(tmp_path, make_checkpoint):
    path = make_checkpoint(
        tmp_path, "qwen3_moe", num_experts=16, num_experts_per_tok=2, mlp_only_layers=[]
    )
    prompts = [[(i * 7 + j) % 90 + 3 for j in range(96)] for i in range(4)]
    params = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
    common = dict(device="cpu", block_size=8, max_num_seqs=4)
    chunked = LLM(str(path), max_num_batched_tokens=16, **common)
    layered_llm = LLM(str(path), scheduling_policy="layered", **common)
    a = chunked.generate(prompts, params)
    b = layered_llm.generate(prompts, params)
    assert [o.token_ids for o in a] == [o.token_ids for o in b]
    ratio = layered_llm.stats.expert_bytes_loaded / chunked.stats.expert_bytes_loaded
    print(f"expert bytes layered/chunked-16: {ratio:.3f}")
    assert ratio < 0.5


class LayeredFakeModel:
    """Each layer's cache slot for position p holds v_p = hash((v_{p-1}, token_p)); a sampled
    token is v_last % 50. A cohort writes only its group's layers per step, so a block reused
    or overwritten while the cohort is in flight shows up as layers that disagree."""

    def __init__(self, num_layers: int, block_size: int):
        self.kv: list[dict[int, int]] = [{} for _ in range(num_layers)]
        self.bs, self.num_layers = block_size, num_layers

    def _run(self, chunk, layers: range) -> int:
        seq, bs = chunk.seq, self.bs
        slot = lambda p: seq.block_table[p // bs] * bs + p % bs  # noqa: E731
        for layer in layers:
            v = 12345 if chunk.start == 0 else self.kv[layer][slot(chunk.start - 1)]
            for p in range(chunk.start, chunk.start + chunk.num_tokens):
                v = hash((v, seq.all_token_ids[p]))
                self.kv[layer][slot(p)] = v
        return v

    def run(self, out) -> dict[int, int]:
        sampled = {}
        for c in out.chunks:
            v = self._run(c, range(self.num_layers))
            if c.samples:
                sampled[c.seq.seq_id] = v % 50
        if out.cohort is not None:
            co = out.cohort
            for c in co.chunks:
                v = self._run(c, range(co.layer_start, co.layer_end))
                if co.is_last:
                    last = c.seq.block_table[(c.start + c.num_tokens - 1) // self.bs] * self.bs
                    last += (c.start + c.num_tokens - 1) % self.bs
                    assert len({kv[last] for kv in self.kv}) == 1, f"{c.seq} KV torn mid-flight"
                    if c.samples:
                        sampled[c.seq.seq_id] = v % 50
        return sampled


def solo(prompt: list[int], max_tokens: int) -> list[int]:
    v, tokens, out = 12345, list(prompt), []
    for i in range(len(prompt) + max_tokens - 1):
        v = hash((v, tokens[i]))
        if i >= len(prompt) - 1:
            out.append(v % 50)
            tokens.append(out[-1])
    return out


@pytest.mark.parametrize("seed", range(4))
def test_random_workload_under_layered_matches_solo_runs(seed):
    rng = random.Random(seed)
    num_layers = rng.randint(1, 6)
    sched = layered(
        num_blocks=rng.randint(10, 20),
        block_size=2,
        max_model_len=40,
        max_num_seqs=rng.randint(2, 5),
        num_layers=num_layers,
        layered_budget=rng.choice([4, 8, 16]),
        layered_group_tokens=rng.choice([1, 2, 4]),
        layered_max_groups=rng.randint(1, 8),
    )
    model = LayeredFakeModel(num_layers, 2)
    prefix = [rng.randrange(50) for _ in range(6)]
    expected, done, aborted, pending = {}, {}, set(), 30
    for _ in range(3000):
        if not pending and not sched.has_unfinished():
            break
        if pending and rng.random() < 0.5:
            pending -= 1
            prompt = prefix[: rng.randint(0, 6)] + [rng.randrange(50) for _ in range(6)]
            s = Sequence(prompt, SimpleNamespace(max_tokens=rng.randint(1, 8)))
            sched.add(s)
            expected[s.seq_id] = solo(prompt, s.max_tokens)
        if rng.random() < 0.03 and sched.running:
            aborted.add(sched.abort(rng.choice(sched.running).seq_id).seq_id)
        out = sched.schedule()
        in_flight = {c.seq.seq_id for c in out.cohort.chunks} if out.cohort else set()
        assert not in_flight & {s.seq_id for s in out.preempted}
        for s in sched.postprocess(out, model.run(out)):
            if s.num_output_tokens == s.max_tokens:
                sched.finish(s, "length")
                done[s.seq_id] = s.output_token_ids
    else:
        raise AssertionError("the layered scheduler stopped making progress")
    assert set(done) | aborted == set(expected)
    assert all(done[i] == expected[i] for i in done)
    assert sched.block_manager.num_free_blocks == sched.config.num_blocks
