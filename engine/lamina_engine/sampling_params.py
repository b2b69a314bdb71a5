"""SamplingParams: how one request picks its tokens and when it stops.

Field names and defaults follow vLLM's offline API, so a user who knows `vllm.SamplingParams`
knows this one. Values are validated once, in the constructor; the sampler and the engine trust
them afterwards. Instances are frozen: use `dataclasses.replace(params, temperature=0.0)` to
derive a variant (it validates again).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# Below this temperature a row is sampled greedily: dividing logits by ~0 only overflows.
GREEDY_TEMPERATURE = 1e-5
# The OpenAI API caps top_logprobs at 20; larger k costs a top-k over the vocabulary per step.
MAX_LOGPROBS = 20
# torch.Generator.manual_seed accepts [-2**63, 2**64).
_SEED_MIN, _SEED_MAX = -(2**63), 2**64 - 1
# Token counts and ids live in int32/int64 tensors; no context is anywhere near 2**31 tokens.
MAX_TOKEN_COUNT = 2**31 - 1
# Every stop string is matched against each new piece of text: bound the per-token work.
MAX_STOPS, MAX_STOP_CHARS = 64, 1024
MAX_STOP_TOKEN_IDS = 1024
# Above this the distribution is uniform to float32 precision; larger values only risk inf.
MAX_TEMPERATURE = 1e4


class InvalidSamplingParams(ValueError):
    """A SamplingParams field has a value the engine cannot honour."""


def _bad(name: str, value: Any, allowed: str) -> InvalidSamplingParams:
    return InvalidSamplingParams(f"SamplingParams.{name}={value!r} is invalid: {allowed}")


def _short(value: Any) -> Any:
    """`value` for an error message: a long list is cut to its first few items."""
    if isinstance(value, Sequence) and not isinstance(value, str) and len(value) > 4:
        return f"[{', '.join(map(repr, value[:4]))}, ... ({len(value)} items)]"
    return value


def _is_int(value: Any) -> bool:
    # bool is an int subclass, but `max_tokens=True` is always a mistake.
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


@dataclass(frozen=True)
class SamplingParams:
    """Per-request sampling and stopping settings (vLLM's names and defaults).

    n: completions per prompt; only 1 is supported.
    temperature: softmax temperature; 0 means greedy (argmax).
    top_p: keep the smallest set of tokens whose probability sums to >= top_p; 1 = off.
    top_k: keep the k most likely tokens; 0 or -1 = off (stored as 0).
    min_p: drop tokens whose probability is below min_p * (the top token's probability); 0 = off.
    seed: per-request seed; the same seed and logits give the same tokens whatever the batch.
    max_tokens: most tokens to generate. min_tokens: EOS and stop tokens are ignored before this.
    stop: strings that end generation; stop_token_ids: token ids that do (both stored as tuples,
        empty when None).
    ignore_eos: keep generating past EOS (until max_tokens or a stop).
    logprobs: None = none; k >= 0 = the sampled token's logprob plus the top-k alternatives.
    include_stop_str_in_output: keep the matched stop string at the end of the text.
    skip_special_tokens: leave special tokens out of the detokenised text.
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    max_tokens: int = 16
    min_tokens: int = 0
    stop: str | Sequence[str] | None = None
    stop_token_ids: Sequence[int] | None = None
    ignore_eos: bool = False
    logprobs: int | None = None
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True

    def __post_init__(self) -> None:
        self._check_counts()
        self._check_filters()
        self._check_stops()
        for name in ("ignore_eos", "include_stop_str_in_output", "skip_special_tokens"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise _bad(name, value, "must be True or False")

    def _check_counts(self) -> None:
        if not _is_int(self.n) or self.n < 1:
            raise _bad("n", self.n, "must be an integer >= 1")
        if self.n > 1:
            raise _bad(
                "n", self.n, "only n=1 is supported; send n requests (with different seeds) instead"
            )
        if not _is_int(self.max_tokens) or not 1 <= self.max_tokens <= MAX_TOKEN_COUNT:
            raise _bad(
                "max_tokens", self.max_tokens, f"must be an integer >= 1 and <= {MAX_TOKEN_COUNT}"
            )
        if not _is_int(self.min_tokens) or not 0 <= self.min_tokens <= self.max_tokens:
            raise _bad(
                "min_tokens",
                self.min_tokens,
                f"must be an integer in [0, max_tokens={self.max_tokens}]",
            )
        if self.seed is not None and (
            not _is_int(self.seed) or not _SEED_MIN <= self.seed <= _SEED_MAX
        ):
            raise _bad(
                "seed", self.seed, f"must be None or an integer in [{_SEED_MIN}, {_SEED_MAX}]"
            )
        if self.logprobs is not None and (
            not _is_int(self.logprobs) or not 0 <= self.logprobs <= MAX_LOGPROBS
        ):
            raise _bad(
                "logprobs", self.logprobs, f"must be None or an integer in [0, {MAX_LOGPROBS}]"
            )

    def _check_filters(self) -> None:
        if not _is_real(self.temperature) or not 0 <= self.temperature <= MAX_TEMPERATURE:
            raise _bad(
                "temperature", self.temperature, f"must be a finite number >= 0 and <= {MAX_TEMPERATURE:g} "
                "(0 = greedy)",
            )  # fmt: skip
        if not _is_real(self.top_p) or not 0 < self.top_p <= 1:
            raise _bad("top_p", self.top_p, "must be a number in (0, 1] (1 = off)")
        if not _is_int(self.top_k) or self.top_k < -1:
            raise _bad(
                "top_k", self.top_k, "must be an integer >= 1 (above the vocabulary = all), or "
                "0 / -1 for off",
            )  # fmt: skip
        if self.top_k == -1:
            object.__setattr__(self, "top_k", 0)
        if not _is_real(self.min_p) or not 0 <= self.min_p <= 1:
            raise _bad("min_p", self.min_p, "must be a number in [0, 1] (0 = off)")

    def _check_stops(self) -> None:
        stop = self.stop
        if stop is None:
            strings: tuple[str, ...] = ()
        elif isinstance(stop, str):
            strings = (stop,)
        elif isinstance(stop, Sequence) and all(isinstance(s, str) for s in stop):
            strings = tuple(stop)
        else:
            raise _bad("stop", stop, "must be None, a string or a list of strings")
        if any(s == "" for s in strings):
            raise _bad("stop", stop, "stop strings must be non-empty")
        if len(strings) > MAX_STOPS or any(len(s) > MAX_STOP_CHARS for s in strings):
            raise _bad(
                "stop", _short(stop), f"at most {MAX_STOPS} stop strings of at most "
                f"{MAX_STOP_CHARS} characters each",
            )  # fmt: skip
        ids = self.stop_token_ids
        if ids is None:
            ids = ()
        elif (
            isinstance(ids, (str, bytes))
            or not isinstance(ids, Sequence)
            or len(ids) > MAX_STOP_TOKEN_IDS
            or not all(_is_int(i) and 0 <= i <= MAX_TOKEN_COUNT for i in ids)
        ):
            raise _bad(
                "stop_token_ids", _short(ids), f"must be None or a list of at most "
                f"{MAX_STOP_TOKEN_IDS} integers >= 0 and <= {MAX_TOKEN_COUNT}",
            )  # fmt: skip
        # Stored as tuples so instances stay hashable and nobody mutates a shared list.
        object.__setattr__(self, "stop", strings)
        object.__setattr__(self, "stop_token_ids", tuple(ids))

    @property
    def is_greedy(self) -> bool:
        """True when the sampler takes the argmax for this request."""
        return self.temperature < GREEDY_TEMPERATURE

    @property
    def needs_top_k_or_top_p(self) -> bool:
        return self.top_k > 0 or self.top_p < 1.0
