"""Seeded synthetic workloads: request lengths and Poisson arrival times (no downloads).

    sharegpt-like  chat: prompt ~ lognormal(median 200) clipped to [16, 1024] tokens,
                   output ~ uniform [100, 300]
    arxiv-like     summarisation: prompt ~ uniform [2048, 8192], output ~ uniform [100, 250]

`scale` multiplies every length (and its bounds) so CPU runs stay small; the arrival process is
independent of it. Prompt token ids are random in [1, vocab): the benchmark measures scheduling
and traffic, which depend on lengths and routing, not on text.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass


@dataclass(frozen=True)
class LengthSpec:
    prompt: tuple[str, float, float, int, int]  # (dist, a, b, lo, hi); lognormal: a=median, b=sigma
    output: tuple[int, int]  # uniform inclusive bounds


WORKLOADS: dict[str, LengthSpec] = {
    "sharegpt-like": LengthSpec(prompt=("lognormal", 200, 0.8, 16, 1024), output=(100, 300)),
    "arxiv-like": LengthSpec(prompt=("uniform", 2048, 8192, 2048, 8192), output=(100, 250)),
}


@dataclass(frozen=True)
class BenchRequest:
    request_id: str
    arrival: float  # seconds after the start of the run
    prompt_token_ids: list[int]
    max_tokens: int  # exact output length (EOS is ignored)


def length_bounds(name: str, scale: float = 1.0) -> tuple[tuple[int, int], tuple[int, int]]:
    """((prompt lo, hi), (output lo, hi)) in tokens after scaling."""
    spec = _spec(name)
    _, _, _, lo, hi = spec.prompt
    olo, ohi = spec.output
    return (_scaled(lo, scale), _scaled(hi, scale)), (_scaled(olo, scale), _scaled(ohi, scale))


def make_workload(
    name: str, num_requests: int, rate: float, *, seed: int = 0, scale: float = 1.0, vocab: int
) -> list[BenchRequest]:
    """`num_requests` requests arriving as a Poisson process of `rate` requests/s.

    The same (name, num_requests, seed, scale) gives the same prompts at every rate; only the
    arrival times change (they are drawn from their own generator), so rates compare like
    with like.
    """
    spec = _spec(name)
    if num_requests < 1:
        raise ValueError(f"--requests must be at least 1, got {num_requests}")
    if not rate > 0:
        raise ValueError(f"the arrival rate must be positive (requests/s), got {rate}")
    if not scale > 0:
        raise ValueError(f"--scale must be positive, got {scale}")
    (plo, phi), (olo, ohi) = length_bounds(name, scale)
    dist, a, b, _, _ = spec.prompt
    lengths = random.Random(seed)
    tokens = random.Random(seed + 1)
    arrivals = random.Random(seed + 2)
    t, out = 0.0, []
    for i in range(num_requests):
        if dist == "lognormal":
            raw = math.exp(lengths.gauss(math.log(a), b)) * scale
        else:
            raw = lengths.uniform(a, b) * scale
        plen = min(phi, max(plo, round(raw)))
        olen = lengths.randint(olo, ohi)
        ids = [tokens.randrange(1, vocab) for _ in range(plen)]
        out.append(BenchRequest(f"r{i}", t, ids, olen))
        t += arrivals.expovariate(rate)
    return out


def _spec(name: str) -> LengthSpec:
    if name not in WORKLOADS:
        raise ValueError(f"unknown workload {name!r}; choose one of: {', '.join(WORKLOADS)}")
    return WORKLOADS[name]


def _scaled(n: int, scale: float) -> int:
    return max(1, round(n * scale))
