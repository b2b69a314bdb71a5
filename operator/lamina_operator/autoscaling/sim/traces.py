"""Traffic traces: arrival rate over time and the prompt/output lengths of each phase.

Seeded (random.Random), no downloads. Lengths: `chat` is the engine benchmark's sharegpt-like
(prompt lognormal, median 200, clipped to [16, 1024]; output uniform [100, 300]);
`prefill-heavy` long prompts and short answers (RAG, summarisation); `decode-heavy` short
prompts and long answers (reasoning, code). Arrivals are Poisson at the trace's rate.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Request:
    id: int
    arrival: float  # seconds from the start of the trace
    prompt: int  # tokens
    output: int  # tokens


def _lengths(kind: str, rng: random.Random) -> tuple[int, int]:
    if kind == "chat":
        return min(1024, max(16, int(rng.lognormvariate(math.log(200), 0.8)))), rng.randint(
            100, 300
        )
    if kind == "prefill-heavy":
        return rng.randint(1500, 3000), rng.randint(10, 40)
    if kind == "decode-heavy":
        return rng.randint(32, 128), rng.randint(300, 600)
    raise ValueError(f"unknown request kind {kind!r}")


@dataclass(frozen=True)
class Trace:
    name: str
    duration: float  # seconds
    rate: Callable[[float], float]  # requests/s at time t
    kind: Callable[[float], str]  # request kind at time t
    description: str

    def requests(self, seed: int = 0) -> list[Request]:
        """Poisson arrivals by thinning a process at the trace's peak rate."""
        rng = random.Random(seed)
        peak = max(self.rate(t) for t in range(int(self.duration) + 1))
        out, t = [], 0.0
        while True:
            t += rng.expovariate(peak)
            if t >= self.duration:
                return out
            if rng.random() * peak <= self.rate(t):
                prompt, output = _lengths(self.kind(t), rng)
                out.append(Request(len(out), t, prompt, output))


def _bursts(t: float) -> float:
    # 4 req/s, with four bursts to 16 req/s: 90 s each, rising over 10 s.
    for start in (600, 1500, 2400, 3000):
        if start <= t < start + 90:
            return 4 + 12 * min(1.0, (t - start) / 10)
    return 4.0


def _shifting_kind(t: float) -> str:
    return ("chat", "prefill-heavy", "decode-heavy", "prefill-heavy")[min(3, int(t // 900))]


TRACES: dict[str, Trace] = {
    t.name: t
    for t in (
        Trace("steady", 3600, lambda t: 8.0, lambda t: "chat", "8 req/s chat for an hour"),
        Trace(
            "diurnal",
            3600,
            lambda t: 2 + 10 * math.sin(math.pi * t / 3600) ** 2,
            lambda t: "chat",
            "chat ramping 2 -> 12 -> 2 req/s over an hour",
        ),
        Trace("bursty", 3600, _bursts, lambda t: "chat", "4 req/s chat, four 90 s bursts to 16"),
        Trace(
            "shifting",
            3600,
            lambda t: 3.0 if _shifting_kind(t) == "prefill-heavy" else 6.0,
            _shifting_kind,
            "15 min each: chat 6/s, prefill-heavy 3/s, decode-heavy 6/s, prefill-heavy 3/s",
        ),
    )
}
