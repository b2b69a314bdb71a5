"""A failure inside Engine.step fails only the request it belongs to: the others in the same
batch get exactly the tokens of a run without it, and the engine goes on serving.

The fault is injected the way a kernel bug or a validation gap would show it: a request's
SamplingParams holds a value the sampler cannot use (set past the constructor's checks)."""

from __future__ import annotations

import dataclasses

import torch

from lamina_engine.config import EngineConfig
from lamina_engine.demo import demo_model_path
from lamina_engine.engine import Engine
from lamina_engine.sampler import Sampler
from lamina_engine.sampling_params import SamplingParams

PARAMS = SamplingParams(max_tokens=8, temperature=0.8, seed=3, ignore_eos=True)
PROMPTS = {"a": [5, 6, 7, 8], "b": [9, 10, 11], "c": [12, 13, 14, 15, 16]}


def make_engine() -> Engine:
    return Engine(EngineConfig(model=str(demo_model_path()), dtype="float32", device="cpu",
                               num_gpu_blocks=64, block_size=8))  # fmt: skip


def run(engine: Engine, broken: str | None = None) -> tuple[dict, dict]:
    """Every request to its end; `broken`'s top_p is made unusable after its first token."""
    outs, errors = {}, {}
    for rid, ids in PROMPTS.items():
        engine.add_request(rid, ids, dataclasses.replace(PARAMS))
    steps = 0
    while engine.has_unfinished():
        result = engine.step()
        errors.update(result.errors)
        for out in result.outputs:
            outs[out.request_id] = out
        steps += 1
        if steps == 1 and broken is not None:
            object.__setattr__(engine._requests[broken].seq.params, "top_p", "not a number")
    return outs, errors


def test_huge_top_k_samples_as_all():
    sampler = Sampler()
    logits = torch.randn(2, 50)
    gens = [torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)]
    huge = dataclasses.replace(PARAMS, top_k=2**63)
    off = dataclasses.replace(PARAMS, top_k=0)
    a = sampler.sample(logits[:1], [huge], gens[:1]).token_ids
    b = sampler.sample(logits[:1], [off], gens[1:]).token_ids
    assert a == b


def test_a_request_whose_sampling_fails_fails_alone():
    engine = make_engine()
    clean, clean_errors = run(engine)
    assert not clean_errors
    outs, errors = run(engine, broken="b")
    assert set(errors) == {"b"} and "sampling failed" in errors["b"]
    assert outs["b"].finish_reason == "error"
    for rid in ("a", "c"):
        assert outs[rid].finish_reason == "length"
        assert outs[rid].token_ids == clean[rid].token_ids
    again, errors = run(engine)  # nothing left behind: the same tokens as the first run
    assert not errors
    assert {r: o.token_ids for r, o in again.items()} == {r: o.token_ids for r, o in clean.items()}
    assert engine.scheduler.num_running == 0 and engine.scheduler.num_waiting == 0
