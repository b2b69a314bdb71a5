"""RequestOutput: what the engine hands back for one request, with its timing (RequestMetrics)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RequestMetrics:
    """Wall-clock times (time.perf_counter seconds) of one request's life."""

    arrival_time: float
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    token_times: list[float] = field(default_factory=list)  # one per output token
    finished_time: float | None = None

    @property
    def ttft(self) -> float | None:
        """Time to first token, seconds."""
        return None if self.first_token_time is None else self.first_token_time - self.arrival_time

    @property
    def tbt(self) -> list[float]:
        """Time between consecutive output tokens, seconds."""
        t = self.token_times
        return [b - a for a, b in zip(t, t[1:])]

    @property
    def e2e(self) -> float | None:
        return None if self.finished_time is None else self.finished_time - self.arrival_time


@dataclass
class RequestOutput:
    """One request's result so far (cumulative; `finished` tells whether more will come).

    Tokens, logprobs and text pieces only grow, so `delta` hands a server what is new since
    its last look in O(new), never a copy of the whole output."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    token_ids: list[int] = field(default_factory=list)
    text_pieces: list[str] = field(default_factory=list)  # released text, in order
    finished: bool = False
    finish_reason: str | None = None  # "stop" | "length" | "abort" | "error"
    stop_reason: int | str | None = None  # the stop token id or stop string that ended it
    logprobs: list[float] | None = None  # logprob of each sampled token
    top_logprobs: list[dict[int, float]] | None = None  # per token, when logprobs=k > 0
    error: str | None = None  # why the request failed (finish_reason "error")
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache
    metrics: RequestMetrics | None = None

    @property
    def text(self) -> str:
        """The output text released so far (cut at a matched stop string)."""
        return "".join(self.text_pieces)

    def delta(self, num_tokens: int, num_pieces: int) -> RequestDelta:
        """What came after the first `num_tokens` tokens and `num_pieces` text pieces."""
        lps, tops = self.logprobs, self.top_logprobs
        return RequestDelta(
            request_id=self.request_id,
            token_ids=self.token_ids[num_tokens:],
            text="".join(self.text_pieces[num_pieces:]),
            logprobs=None if lps is None else lps[num_tokens:],
            top_logprobs=None if tops is None else tops[num_tokens:],
            finished=self.finished,
            finish_reason=self.finish_reason,
            stop_reason=self.stop_reason,
            num_cached_tokens=self.num_cached_tokens,
        )

    def add(self, delta: RequestDelta) -> None:
        """Append a delta (the receiving side rebuilds the output from its deltas)."""
        self.token_ids += delta.token_ids
        if delta.text:
            self.text_pieces.append(delta.text)
        if delta.logprobs is not None:  # list += extends in place: O(new)
            self.logprobs = self.logprobs or []
            self.logprobs += delta.logprobs
        if delta.top_logprobs is not None:
            self.top_logprobs = self.top_logprobs or []
            self.top_logprobs += delta.top_logprobs
        self.finished, self.finish_reason = delta.finished, delta.finish_reason
        self.stop_reason, self.num_cached_tokens = delta.stop_reason, delta.num_cached_tokens


@dataclass
class RequestDelta:
    """What one request gained since the previous delta; `finished` and the reasons are its
    state now. What a server streams: each costs O(new tokens), whatever the output length."""

    request_id: str
    token_ids: list[int]
    text: str
    logprobs: list[float] | None = None
    top_logprobs: list[dict[int, float]] | None = None
    finished: bool = False
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    num_cached_tokens: int = 0
