"""The offline LLM end to end: HF-identical greedy continuations, batching, caching, stops, errors."""

from __future__ import annotations

import pytest
import torch

from lamina_engine import LLM, SamplingParams

FAMILIES = ("qwen3_moe", "mixtral", "olmoe", "llama", "qwen3")
PROMPTS = [[3, 17, 42], [5] * 11, list(range(10, 40)), [7, 8, 9, 10, 11, 12, 13, 14, 15, 1, 2]]


def hf_greedy(hf, prompt: list[int], n: int) -> tuple[list[int], list[float]]:
    """HF's greedy continuation of one unpadded prompt, with its top-2 margin per step."""
    out = hf.generate(
        torch.tensor([prompt]),
        max_new_tokens=n,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
        output_scores=True,
        return_dict_in_generate=True,
    )
    top2 = torch.stack(out.scores, 1)[0].topk(2, dim=-1).values
    return out.sequences[0, len(prompt) :].tolist(), (top2[:, 0] - top2[:, 1]).tolist()


def assert_same_tokens(ours: list[int], theirs: list[int], margins: list[float]) -> None:
    if ours == theirs:
        return
    j = next(i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b)
    raise AssertionError(
        f"diverged from HF at token {j}: ours {ours[j]}, HF {theirs[j]} "
        f"(HF top-2 margin there {margins[j]:.2e}); ours={ours} hf={theirs}"
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_batch_matches_hf(family, tmp_path, make_checkpoint, hf_model):
    path = make_checkpoint(tmp_path, family)
    hf = hf_model(path)
    # Small blocks and budget: prompts span blocks, prefills are chunked and overlap decodes.
    llm = LLM(str(path), device="cpu", max_num_seqs=4, max_num_batched_tokens=8, block_size=4)
    n = 12
    outs = llm.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=n, ignore_eos=True))
    for prompt, out in zip(PROMPTS, outs):
        theirs, margins = hf_greedy(hf, prompt, n)
        assert out.finish_reason == "length" and len(out.token_ids) == n
        assert_same_tokens(out.token_ids, theirs, margins)
    assert llm.stats.prefill_tokens >= sum(map(len, PROMPTS))
    assert llm.stats.decode_tokens > 0 and llm.stats.steps > 0
    if family in ("qwen3_moe", "mixtral", "olmoe"):
        assert llm.stats.expert_bytes_loaded > 0
    else:
        assert llm.stats.expert_bytes_loaded == 0


def test_preemption_and_prefix_cache_keep_tokens(tmp_path, make_checkpoint):
    path = make_checkpoint(tmp_path, "qwen3_moe")
    params = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)
    prompts = [list(range(1, 25)) + [i] for i in range(6)]  # shared 24-token prefix
    roomy = LLM(str(path), device="cpu", block_size=4, enable_prefix_caching=False)
    ref = [o.token_ids for o in roomy.generate(prompts, params)]
    # 30 blocks of 4 tokens cannot hold 6 x 45 tokens: the scheduler must preempt and recompute.
    tight = LLM(str(path), device="cpu", block_size=4, num_gpu_blocks=30, max_num_batched_tokens=64)
    outs = tight.generate(prompts, params)
    assert [o.token_ids for o in outs] == ref
    assert tight.stats.preemptions > 0
    assert any(o.num_cached_tokens > 0 for o in outs)  # the shared prefix was reused


def test_seed_gives_same_tokens_in_any_batch(tmp_path, make_checkpoint):
    path = make_checkpoint(tmp_path, "mixtral")
    llm = LLM(str(path), device="cpu")
    p = SamplingParams(temperature=1.0, top_p=0.9, seed=1234, max_tokens=10, ignore_eos=True)
    other = SamplingParams(temperature=1.0, max_tokens=7, ignore_eos=True)
    alone = llm.generate([[1, 2, 3]], p)[0].token_ids
    crowded = llm.generate([[9, 9], [1, 2, 3], [4, 5, 6, 7]], [other, p, other])[1].token_ids
    assert alone == crowded


def test_stop_token_ids_min_tokens_and_logprobs(tmp_path, make_checkpoint):
    path = make_checkpoint(tmp_path, "llama")
    llm = LLM(str(path), device="cpu")
    free = llm.generate([[1, 2, 3]], SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))
    toks = free[0].token_ids
    stop_at = toks[3]
    first = toks.index(stop_at)
    out = llm.generate(
        [[1, 2, 3]],
        SamplingParams(
            temperature=0, max_tokens=8, stop_token_ids=[stop_at], ignore_eos=True, logprobs=2
        ),
    )[0]
    assert out.finish_reason == "stop" and out.stop_reason == stop_at
    assert out.token_ids == toks[: first + 1]
    assert len(out.logprobs) == len(out.token_ids) and all(lp <= 0 for lp in out.logprobs)
    assert all(len(t) == 2 for t in out.top_logprobs)
    late = llm.generate(
        [[1, 2, 3]],
        SamplingParams(
            temperature=0,
            max_tokens=8,
            min_tokens=first + 2,
            stop_token_ids=[stop_at],
            ignore_eos=True,
        ),
    )[0]
    # Before min_tokens the stop id cannot be sampled (vLLM's rule): the output runs on.
    assert stop_at not in late.token_ids[: first + 2]
    assert len(late.token_ids) >= first + 2


def test_bad_requests_fail_alone(tmp_path, make_checkpoint):
    path = make_checkpoint(tmp_path, "qwen3", max_position_embeddings=64)
    llm = LLM(str(path), device="cpu")
    params = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
    outs = llm.generate([[1, 2], list(range(1, 70)), [], [1, 500], [3, 4]], params)
    assert [o.finish_reason for o in outs] == ["length", "error", "error", "error", "length"]
    assert "64" in outs[1].error and "max_model_len" in outs[1].error
    assert "empty" in outs[2].error
    assert "[0, 96)" in outs[3].error
    assert len(outs[4].token_ids) == 4
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=-1)
    with pytest.raises(ValueError, match="2 prompts but 3"):
        llm.generate([[1], [2]], [params] * 3)


def test_request_that_never_fits_the_cache(tmp_path, make_checkpoint):
    path = make_checkpoint(tmp_path, "qwen3")
    llm = LLM(str(path), device="cpu", block_size=4, num_gpu_blocks=3)
    outs = llm.generate([list(range(1, 30)), [1, 2]], SamplingParams(max_tokens=2, temperature=0))
    assert outs[0].finish_reason == "error" and "block" in outs[0].error
    assert outs[1].finish_reason == "length"


def test_text_prompt_needs_a_tokenizer(tmp_path, make_checkpoint):
    path = make_checkpoint(tmp_path, "qwen3")
    out = LLM(str(path), device="cpu").generate("hello")[0]
    assert out.finish_reason == "error" and "tokenizer.json" in out.error


def test_timing_metrics(tmp_path, make_checkpoint):
    path = make_checkpoint(tmp_path, "olmoe")
    out = LLM(str(path), device="cpu").generate(
        [[1, 2, 3, 4]], SamplingParams(max_tokens=5, temperature=0, ignore_eos=True)
    )[0]
    m = out.metrics
    assert m.ttft > 0 and len(m.token_times) == 5 and len(m.tbt) == 4
    assert m.e2e >= m.ttft and all(t >= 0 for t in m.tbt)
