"""Latency percentiles, SLO attainment and run summaries from simulated request timings.

All times are seconds on the replay's simulated clock. Percentiles interpolate linearly between
order statistics (numpy's default "linear" method). A request attains the SLO when its TTFT is
at most the TTFT target AND its p99 time-between-tokens is at most the TBT target (a request
with one output token has no TBT and is judged on TTFT alone).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

PERCENTILES = (50, 90, 99)


@dataclass
class RequestTiming:
    request_id: str
    arrival: float
    prompt_tokens: int
    token_times: list[float] = field(default_factory=list)  # simulated time of each output token

    @property
    def ttft(self) -> float:
        return self.token_times[0] - self.arrival

    @property
    def tbts(self) -> list[float]:
        t = self.token_times
        return [b - a for a, b in zip(t, t[1:])]

    @property
    def e2e(self) -> float:
        return self.token_times[-1] - self.arrival


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation; NaN for no values."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {q}")
    if not values:
        return math.nan
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def attains(r: RequestTiming, ttft_slo: float, tbt_slo: float) -> bool:
    tbts = r.tbts
    return r.ttft <= ttft_slo and (not tbts or percentile(tbts, 99) <= tbt_slo)


def attainment(reqs: list[RequestTiming], ttft_slo: float, tbt_slo: float) -> float:
    """Share of requests (0..1) that meet both SLOs."""
    if not reqs:
        return math.nan
    return sum(attains(r, ttft_slo, tbt_slo) for r in reqs) / len(reqs)


def latency_summary(reqs: list[RequestTiming]) -> dict[str, float]:
    """ttft/tbt/e2e p50/p90/p99 in seconds (TBT pooled over every gap of every request)."""
    series = {
        "ttft": [r.ttft for r in reqs],
        "tbt": [g for r in reqs for g in r.tbts],
        "e2e": [r.e2e for r in reqs],
    }
    out = {}
    for name, values in series.items():
        for q in PERCENTILES:
            out[f"{name}_p{q}"] = percentile(values, q)
        out[f"{name}_mean"] = sum(values) / len(values) if values else math.nan
    return out
