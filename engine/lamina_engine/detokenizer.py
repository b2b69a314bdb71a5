"""Streaming detokenization and stop strings, one instance per request.

Two problems, two classes:
- A token is not a character: byte-level BPE splits an emoji or a CJK character over several
  tokens, and decoding a partial byte sequence gives U+FFFD. `IncrementalDetokenizer` decodes a
  small sliding window of ids and holds text back until it ends on a complete character.
- A stop string can span tokens ("###" from "#" + "##"). `StopStringMatcher` searches the text,
  truncates at the match, and holds back any tail that could still grow into a stop string, so a
  streaming client never sees a partial stop string it would later have to retract.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from lamina_engine.sampling_params import SamplingParams
from lamina_engine.tokenizer import Tokenizer

# Prompt tokens decoded before the first output token, so tokenizers whose decoders strip a
# leading space at the start of a text (SentencePiece) keep the output's first space.
_PROMPT_CONTEXT_TOKENS = 5
_REPLACEMENT_CHAR = "\ufffd"


class StopStringMatcher:
    """Finds stop strings in streamed text; knows nothing about tokens."""

    def __init__(self, stop: Sequence[str], include_stop_str_in_output: bool = False) -> None:
        if any(not s for s in stop):
            raise ValueError("stop strings must be non-empty")
        self.stop = tuple(stop)
        self.include_stop_str_in_output = include_stop_str_in_output
        self.text = ""  # all text so far; cut at the stop string once one matched
        self.stop_str: str | None = None
        self._released = 0  # characters of self.text already returned to the caller
        self._longest = max((len(s) for s in self.stop), default=0)

    def add(self, delta: str, search: bool = True) -> str:
        """Append newly decoded text; return the text that is now safe to stream.

        search=False appends without matching (before min_tokens); a stop string that starts
        there but ends in a later, searched delta still counts.
        """
        if self.stop_str is not None or not delta:
            return ""
        # Before this call no stop string matched, so any match now ends inside `delta`.
        search_from = max(0, len(self.text) - self._longest + 1)
        self.text += delta
        match = self._earliest_match(search_from) if search else None
        if match is not None:
            start, stop_str = match
            self.stop_str = stop_str
            end = start + len(stop_str) if self.include_stop_str_in_output else start
            self.text = self.text[:end]
            return self._release(end)
        return self._release(len(self.text) - self._partial_stop_suffix())

    @property
    def released_text(self) -> str:
        """What add() and flush() have returned so far, concatenated."""
        return self.text[: self._released]

    def flush(self) -> str:
        """Generation ended for another reason: a held-back tail was not a stop string after all."""
        return self._release(len(self.text))

    def _earliest_match(self, search_from: int) -> tuple[int, str] | None:
        best: tuple[int, str] | None = None
        for stop_str in self.stop:
            index = self.text.find(stop_str, search_from)
            if index != -1 and (best is None or index < best[0]):
                best = (index, stop_str)
        return best

    def _partial_stop_suffix(self) -> int:
        """Length of the longest tail of the text that is a proper prefix of a stop string."""
        held = 0
        for stop_str in self.stop:
            for length in range(min(len(stop_str) - 1, len(self.text)), held, -1):
                if self.text.endswith(stop_str[:length]):
                    held = length
                    break
        return held

    def _release(self, end: int) -> str:
        if end <= self._released:
            return ""
        out = self.text[self._released : end]
        self._released = end
        return out


@dataclass
class DetokenizerDelta:
    """One step's result. text: new characters for the client (may be empty).
    stop_str: the stop string that has ended generation, else None."""

    text: str
    stop_str: str | None = None


class IncrementalDetokenizer:
    """Token ids in, complete-character text deltas out, with optional stop strings.

    Decodes only the ids since the last emitted boundary (plus the window before it for
    context), so the cost per step stays constant as the output grows. Stop strings are looked
    for only once the output has `min_tokens` tokens (vLLM's rule).
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        prompt_ids: Sequence[int] = (),
        stop: Sequence[str] = (),
        include_stop_str_in_output: bool = False,
        skip_special_tokens: bool = True,
        min_tokens: int = 0,
    ) -> None:
        self._tokenizer = tokenizer
        self._skip_special = skip_special_tokens
        self._include_stop = include_stop_str_in_output
        self._min_tokens = min_tokens
        context = list(prompt_ids[-_PROMPT_CONTEXT_TOKENS:]) if prompt_ids else []
        self._ids = context  # context + output ids whose text is shown
        self._num_output = 0  # output tokens fed, a final stop token included
        # ids[prefix:read] was decoded last time as context; ids[read:] are not yet emitted.
        self._prefix_offset = 0
        self._read_offset = len(context)
        self._stops = StopStringMatcher(stop, include_stop_str_in_output)

    @classmethod
    def from_params(
        cls, tokenizer: Tokenizer, params: SamplingParams, prompt_ids: Sequence[int] = ()
    ) -> IncrementalDetokenizer:
        return cls(
            tokenizer,
            prompt_ids,
            stop=params.stop,
            include_stop_str_in_output=params.include_stop_str_in_output,
            skip_special_tokens=params.skip_special_tokens,
            min_tokens=params.min_tokens,
        )

    @property
    def output_text(self) -> str:
        """All output text decoded so far, held-back tail included; cut at a matched stop."""
        return self._stops.text

    @property
    def text(self) -> str:
        """The text released so far: what a streaming client may already have seen."""
        return self._stops.released_text

    @property
    def stop_str(self) -> str | None:
        return self._stops.stop_str

    def step(self, token_ids: Sequence[int], is_stop_token: bool = False) -> DetokenizerDelta:
        """Feed the ids sampled this step (usually one).

        is_stop_token: the last id is EOS or one of stop_token_ids and ends the request; its
        text is left out unless include_stop_str_in_output, as vLLM does. Call finish() next.
        """
        if self._stops.stop_str is not None:
            return DetokenizerDelta("", self._stops.stop_str)
        self._num_output += len(token_ids)
        if is_stop_token and not self._include_stop:
            token_ids = token_ids[:-1]
        self._ids.extend(token_ids)
        text = self._decode_new(final=False)
        released = self._stops.add(text, search=self._num_output >= self._min_tokens)
        return DetokenizerDelta(released, self._stops.stop_str)

    def add(self, token_id: int, is_stop_token: bool = False) -> str | None:
        """One token; returns the stop string once one has matched (read `text` for output)."""
        return self.step([token_id], is_stop_token).stop_str

    def finish(self) -> str:
        """The request ended (EOS, max_tokens, stop token): release all held-back text, including
        a trailing incomplete character as U+FFFD, as a full decode would show it."""
        if self._stops.stop_str is not None:
            return ""
        text = self._decode_new(final=True)
        released = self._stops.add(text, search=self._num_output >= self._min_tokens)
        return released + self._stops.flush()

    def final_text(self) -> str:
        """finish(), then the request's whole output text."""
        self.finish()
        return self.output_text

    def _decode_new(self, final: bool) -> str:
        ids = self._ids
        decode = self._tokenizer.decode
        prefix_text = decode(ids[self._prefix_offset : self._read_offset], self._skip_special)
        full_text = decode(ids[self._prefix_offset :], self._skip_special)
        if len(full_text) <= len(prefix_text):
            return ""  # e.g. a skipped special token: nothing new to show
        if full_text.endswith(_REPLACEMENT_CHAR) and not final:
            return ""  # a multi-byte character is still incomplete: wait for its other bytes
        self._prefix_offset = self._read_offset
        self._read_offset = len(ids)
        return full_text[len(prefix_text) :]
