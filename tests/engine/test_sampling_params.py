"""SamplingParams: vLLM's names and defaults, and a clear error for every invalid field."""

import dataclasses

import pytest

from lamina_engine.sampling_params import MAX_LOGPROBS, InvalidSamplingParams, SamplingParams


def test_defaults_follow_vllm():
    p = SamplingParams()
    assert (p.n, p.temperature, p.top_p, p.top_k, p.min_p) == (1, 1.0, 1.0, 0, 0.0)
    assert (p.seed, p.max_tokens, p.min_tokens, p.logprobs) == (None, 16, 0, None)
    assert p.stop == () and p.stop_token_ids == ()
    assert not p.ignore_eos and not p.include_stop_str_in_output and p.skip_special_tokens
    assert not p.is_greedy


def test_normalisation():
    assert SamplingParams(stop="###").stop == ("###",)
    assert SamplingParams(stop=["a", "bc"]).stop == ("a", "bc")
    assert SamplingParams(stop_token_ids=[3, 5]).stop_token_ids == (3, 5)
    assert SamplingParams(top_k=-1).top_k == 0
    assert SamplingParams(temperature=0).is_greedy
    assert SamplingParams(temperature=0.0, top_k=5).is_greedy  # temperature 0 wins
    assert SamplingParams(temperature=1e-9).is_greedy  # dividing by ~0 would overflow


def test_frozen_hashable_and_replace_revalidates():
    p = SamplingParams(stop=["x"], seed=3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.temperature = 0.5  # type: ignore[misc]
    assert hash(p) == hash(SamplingParams(stop=("x",), seed=3))
    q = dataclasses.replace(p, temperature=0.0)
    assert q.is_greedy and q.stop == ("x",) and q.seed == 3
    with pytest.raises(InvalidSamplingParams, match="top_p"):
        dataclasses.replace(p, top_p=0.0)


INVALID = [
    ("n", 0, "integer >= 1"),
    ("n", 1.0, "integer >= 1"),
    ("temperature", -0.1, ">= 0"),
    ("temperature", float("nan"), "finite"),
    ("temperature", float("inf"), "finite"),
    ("temperature", "hot", "finite number"),
    ("top_p", 0.0, "(0, 1]"),
    ("top_p", 1.5, "(0, 1]"),
    ("top_k", -2, "0 / -1 for off"),
    ("top_k", 2.5, "integer"),
    ("min_p", -0.01, "[0, 1]"),
    ("min_p", 1.01, "[0, 1]"),
    ("seed", 2**64, "integer in"),
    ("seed", "42", "integer in"),
    ("max_tokens", 0, ">= 1"),
    ("max_tokens", True, ">= 1"),
    ("min_tokens", -1, "[0, max_tokens=16]"),
    ("min_tokens", 17, "[0, max_tokens=16]"),
    ("stop", 5, "list of strings"),
    ("stop", ["ok", 3], "list of strings"),
    ("stop", [""], "non-empty"),
    ("stop_token_ids", [1, -1], "integers >= 0"),
    ("stop_token_ids", "12", "integers >= 0"),
    ("ignore_eos", 1, "True or False"),
    ("logprobs", -1, f"[0, {MAX_LOGPROBS}]"),
    ("logprobs", MAX_LOGPROBS + 1, f"[0, {MAX_LOGPROBS}]"),
    ("include_stop_str_in_output", "yes", "True or False"),
    ("skip_special_tokens", None, "True or False"),
]


@pytest.mark.parametrize(("field", "value", "allowed"), INVALID, ids=lambda v: repr(v)[:20])
def test_invalid_value_names_field_value_and_range(field, value, allowed):
    with pytest.raises(InvalidSamplingParams) as info:
        SamplingParams(**{field: value})
    message = str(info.value)
    assert f"SamplingParams.{field}={value!r}" in message
    assert allowed in message
    assert isinstance(info.value, ValueError)  # callers catching ValueError keep working


def test_n_above_one_is_a_clear_unsupported_error():
    with pytest.raises(InvalidSamplingParams, match=r"only n=1 is supported"):
        SamplingParams(n=4)


@pytest.mark.parametrize("field", ["top_p", "min_p", "temperature"])
def test_boundaries_are_accepted(field):
    edge = {"top_p": 1.0, "min_p": 1.0, "temperature": 0.0}[field]
    assert getattr(SamplingParams(**{field: edge}), field) == edge
    assert SamplingParams(logprobs=0).logprobs == 0
    assert SamplingParams(seed=-(2**63)).seed == -(2**63)
