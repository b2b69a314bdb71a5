"""Greedy output is reproducible: the same request gives bitwise the same tokens and logprobs
alone, batched with other requests, and in a second engine in the same process (what
`lamina bench vs-hf --repeats` relies on), with `batch_invariant=True`. With the default (fastest)
CPU kernels a request's logprobs change with the batch it shares steps with (docs/benchmarks.md)."""

from __future__ import annotations

import random

import pytest
import torch

from lamina_engine import LLM, SamplingParams
from lamina_engine.bench.random_models import make_random_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return str(make_random_model("tiny", tmp_path_factory.mktemp("tiny")))


def _requests(n: int) -> list[tuple[list[int], int]]:
    rng = random.Random(3)
    return [([rng.randrange(1, 512) for _ in range(rng.randint(3, 40))], rng.randint(4, 12))
            for _ in range(n)]  # fmt: skip


def _generate(model: str, reqs, max_num_seqs: int) -> list[tuple[list[int], list[float]]]:
    llm = LLM(model, dtype="float32", device="cpu", max_num_seqs=max_num_seqs, batch_invariant=True)
    params = [SamplingParams(temperature=0.0, max_tokens=o, ignore_eos=True, logprobs=0)
              for _, o in reqs]  # fmt: skip
    outs = llm.generate([p for p, _ in reqs], params)
    return [(o.token_ids, o.logprobs) for o in outs]


def test_greedy_output_does_not_depend_on_the_batch_or_the_run(tiny):
    torch.set_num_threads(2)
    reqs = _requests(6)
    batched = _generate(tiny, reqs, max_num_seqs=6)
    assert _generate(tiny, reqs, max_num_seqs=6) == batched  # a new engine, same process
    alone = [_generate(tiny, [r], max_num_seqs=1)[0] for r in reqs]
    for i, (got, want) in enumerate(zip(alone, batched)):
        assert got == want, f"request {i}: alone {got} != batched {want}"
    # Other partners and another order: the same request still gives the same output.
    shuffled = _generate(tiny, reqs[::-1] + _requests(9)[6:], max_num_seqs=4)
    assert shuffled[:6][::-1] == batched
