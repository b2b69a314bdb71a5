"""Sampler: greedy, filters that never leak, per-request seeds, the right distribution, logprobs."""

import pytest
import torch

from lamina_engine.sampler import Sampler, make_generator
from lamina_engine.sampling_params import SamplingParams

VOCAB = 50


def logits_from_probs(probs: list[float], vocab: int = VOCAB) -> torch.Tensor:
    """[vocab] logits whose softmax puts `probs` on tokens 0.. and ~1e-9 on each other token."""
    full = torch.full((vocab,), 1e-9, dtype=torch.float64)
    full[: len(probs)] = torch.tensor(probs, dtype=torch.float64)
    return full.log().float()


def sample_many(logits_row: torch.Tensor, params: SamplingParams, draws: int, seed: int):
    """`draws` independent tokens: one row per draw, every row drawing from one generator."""
    batch = logits_row.expand(draws, -1).contiguous()
    out = Sampler().sample(batch, [params] * draws, [make_generator(seed)] * draws)
    return torch.tensor(out.token_ids)


def test_greedy_is_argmax_for_a_whole_batch():
    torch.manual_seed(0)
    logits = torch.randn(8, VOCAB)
    out = Sampler().sample(logits, [SamplingParams(temperature=0)] * 8, [make_generator(0)] * 8)
    assert out.token_ids == logits.argmax(-1).tolist()


def test_greedy_rows_stay_argmax_in_a_mixed_batch():
    torch.manual_seed(1)
    logits = torch.randn(6, VOCAB)
    params = [SamplingParams(temperature=0 if i % 2 else 1.0, seed=i) for i in range(6)]
    gens = [make_generator(i) for i in range(6)]
    out = Sampler().sample(logits, params, gens)
    for i in (1, 3, 5):
        assert out.token_ids[i] == int(logits[i].argmax())


def test_top_k_one_equals_greedy_even_with_ties():
    torch.manual_seed(2)
    logits = torch.randn(16, VOCAB) * 3
    logits[0, 7] = logits[0, 30] = logits[0].max() + 1  # tie: argmax takes the lower id
    params = [SamplingParams(temperature=1.3, top_k=1, seed=i) for i in range(16)]
    out = Sampler().sample(logits, params, [make_generator(i) for i in range(16)])
    assert out.token_ids == logits.argmax(-1).tolist()
    assert out.token_ids[0] == 7


@pytest.mark.parametrize(
    ("params", "allowed"),
    [
        # probs 0.4, 0.3, 0.2, 0.09, 0.01: top_p 0.6 keeps {0, 1} (0.4 < 0.6 <= 0.7).
        (SamplingParams(top_p=0.6), {0, 1}),
        (SamplingParams(top_p=0.75), {0, 1, 2}),
        # min_p 0.25 drops below 0.25 * 0.4 = 0.1: keeps {0, 1, 2}.
        (SamplingParams(min_p=0.25), {0, 1, 2}),
        (SamplingParams(top_k=2), {0, 1}),
        # top-k then top-p: top_k=3 renormalises to 4/9, 3/9, 2/9; top_p 0.5 keeps {0, 1}.
        (SamplingParams(top_k=3, top_p=0.5), {0, 1}),
        # temperature 3 flattens: weights p**(1/3) ~ 0.74, 0.67, 0.58, 0.45, 0.22 (min_p applies
        # after temperature): min_p 0.7 cuts at 0.52, keeping {0, 1, 2}.
        (SamplingParams(temperature=3.0, min_p=0.7), {0, 1, 2}),
    ],
    ids=["top_p", "top_p_wider", "min_p", "top_k", "top_k_then_top_p", "temperature_min_p"],
)
def test_filters_never_sample_a_filtered_token(params, allowed):
    row = logits_from_probs([0.4, 0.3, 0.2, 0.09, 0.01])
    tokens = sample_many(row, params, draws=4000, seed=11)
    assert set(tokens.tolist()) == allowed  # nothing outside, and every kept token does occur


def test_seeded_row_is_independent_of_batch_composition_and_order():
    torch.manual_seed(3)
    target = torch.randn(VOCAB)
    others = torch.randn(4, VOCAB)
    mine = SamplingParams(temperature=0.9, top_p=0.95, seed=1234)

    def run(layout: str, steps: int = 6) -> list[int]:
        gen = make_generator(1234)
        other_gens = [make_generator(99), make_generator(5), make_generator(6)]
        picked = []
        for _ in range(steps):
            if layout == "alone":
                out = Sampler().sample(target[None], [mine], [gen])
                picked.append(out.token_ids[0])
            elif layout == "first":
                batch = torch.stack([target, others[0], others[1]])
                ps = [mine, SamplingParams(seed=99, top_k=5), SamplingParams(temperature=0)]
                out = Sampler().sample(batch, ps, [gen, other_gens[0], other_gens[1]])
                picked.append(out.token_ids[0])
            else:  # last, among rows sharing one generator and min-p rows
                batch = torch.stack([others[2], others[3], others[0], target])
                ps = [SamplingParams(), SamplingParams(min_p=0.1), SamplingParams(), mine]
                shared = other_gens[2]
                out = Sampler().sample(batch, ps, [shared, shared, shared, gen])
                picked.append(out.token_ids[3])
        return picked

    alone = run("alone")
    assert run("first") == alone
    assert run("last") == alone
    assert len(set(alone)) > 1  # the row really samples, it is not stuck on one token
    other_seed = []
    gen = make_generator(4321)
    for _ in range(6):
        other_seed.append(Sampler().sample(target[None], [mine], [gen]).token_ids[0])
    assert other_seed != alone


def test_temperature_sampling_matches_softmax():
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0])
    temperature = 0.7
    draws = 40000
    tokens = sample_many(logits, SamplingParams(temperature=temperature), draws, seed=5)
    observed = torch.bincount(tokens, minlength=logits.numel()).double() / draws
    expected = torch.softmax(logits.double() / temperature, dim=-1)
    # Binomial std <= sqrt(0.25 / 40000) = 0.0025; 0.01 is four sigma.
    assert torch.allclose(observed, expected, atol=0.01), (observed, expected)


def test_seeded_draws_follow_the_distribution_too():
    logits = torch.tensor([1.0, 0.0, -1.0])
    gen = make_generator(77)
    counts = torch.zeros(3)
    sampler, params = Sampler(), [SamplingParams(seed=77)]
    for _ in range(3000):
        counts[sampler.sample(logits[None], params, [gen]).token_ids[0]] += 1
    assert torch.allclose(counts / 3000, torch.softmax(logits, -1), atol=0.035)


def test_logprobs_are_raw_log_softmax():
    torch.manual_seed(6)
    logits = torch.randn(4, VOCAB) * 2
    params = [
        SamplingParams(temperature=0, logprobs=3),
        SamplingParams(temperature=0.5, top_k=4, logprobs=5, seed=1),
        SamplingParams(logprobs=0, seed=2),
        SamplingParams(min_p=0.2, seed=3),
    ]
    gens = [make_generator(0), make_generator(1), make_generator(2), make_generator(3)]
    out = Sampler().sample(logits, params, gens)
    reference = torch.log_softmax(logits, dim=-1)
    tokens = torch.tensor(out.token_ids)
    assert torch.allclose(out.logprobs, reference.gather(1, tokens[:, None]).squeeze(1))
    for row, k in ((0, 3), (1, 5)):
        values, ids = reference[row].topk(k)
        got_ids = list(out.top_logprobs[row])  # most likely first
        got_values = torch.tensor(list(out.top_logprobs[row].values()))
        assert got_ids == ids.tolist()
        assert torch.allclose(got_values, values)
    assert out.top_logprobs[2] == {} and out.top_logprobs[3] is None


def test_make_generator_reproduces_and_rejects_bad_inputs():
    a = torch.rand(5, generator=make_generator(9))
    b = torch.rand(5, generator=make_generator(9))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="1 SamplingParams"):
        Sampler().sample(torch.zeros(2, VOCAB), [SamplingParams()], [make_generator(0)] * 2)
    with pytest.raises(ValueError, match=r"\[batch, vocab\]"):
        Sampler().sample(torch.zeros(VOCAB), [SamplingParams()], [make_generator(0)])
