"""Replay a workload against the offline Engine on a simulated clock.

The engine runs as fast as this machine allows; a simulated clock decides what it *would* have
seen. Before each step every request whose arrival time the clock has passed is added; the step
then advances the clock by that step's time (its measured model seconds, or a cost model's
estimate), and every token it produced is stamped with the new clock. When nothing is in flight
the clock jumps to the next arrival. So queueing delay, TTFT and TBT follow the step times
exactly, however slow or noisy the host is, and host work outside the model (tokenizing,
Python scheduling) is not charged.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from lamina_engine.bench.metrics import RequestTiming
from lamina_engine.bench.workloads import BenchRequest
from lamina_engine.engine import Engine
from lamina_engine.engine_stats import StepRecord
from lamina_engine.sampling_params import SamplingParams

StepClock = Callable[[StepRecord], float]  # step record -> simulated seconds it took


def measured_clock(r: StepRecord) -> float:
    return r.model_seconds


class SpeedUnavailable(RuntimeError):
    """This engine build has no SPEED setting (EngineConfig rejects `speed`)."""


@dataclass
class ReplayResult:
    requests: list[RequestTiming]
    steps: list[StepRecord]
    step_seconds: list[float] = field(default_factory=list)  # simulated time of each step
    wall_seconds: float = 0.0  # host time the replay took

    @property
    def output_tokens(self) -> int:
        return sum(len(r.token_times) for r in self.requests)

    @property
    def makespan(self) -> float:
        """Simulated seconds from the first arrival to the last token."""
        start = min(r.arrival for r in self.requests)
        return max(r.token_times[-1] for r in self.requests) - start


def build_engine(
    model: str, *, speed_prefill_layers: int | float | None = None, **settings
) -> Engine:
    """An Engine with EngineConfig `settings`; SPEED only when `speed_prefill_layers` is set."""
    from pydantic import ValidationError

    from lamina_engine.config import EngineConfig

    if speed_prefill_layers is not None:
        if "speed" not in EngineConfig.model_fields:
            raise SpeedUnavailable(
                "this engine has no SPEED support yet (EngineConfig has no `speed` field); "
                "run without --speed-prefill-layers"
            )
        settings["speed"] = {"prefill_layers": speed_prefill_layers}
    try:
        config = EngineConfig(model=model, **settings)
    except ValidationError as exc:
        raise ValueError(f"invalid engine settings for the benchmark: {exc}") from exc
    return Engine(config)


def replay(engine: Engine, requests: list[BenchRequest], clock: StepClock) -> ReplayResult:
    """Run every request to its exact output length; returns simulated timings and step records.

    Recording must be on (`engine.stats.step_records` not None). Raises RuntimeError if the
    engine stops making progress (a request that can never be scheduled).
    """
    records = engine.stats.step_records
    if records is None:
        raise ValueError("the replay needs step records: leave engine.stats.step_records on")
    pending = sorted(requests, key=lambda r: r.arrival)
    timings = {
        r.request_id: RequestTiming(r.request_id, r.arrival, len(r.prompt_token_ids))
        for r in pending
    }
    seen = {r.request_id: 0 for r in pending}
    steps: list[StepRecord] = []
    step_seconds: list[float] = []
    now, i, wall0 = 0.0, 0, time.perf_counter()
    while i < len(pending) or engine.has_unfinished():
        if not engine.has_unfinished() and pending[i].arrival > now:
            now = pending[i].arrival  # idle: jump to the next arrival
        while i < len(pending) and pending[i].arrival <= now:
            r = pending[i]
            params = SamplingParams(temperature=0.0, max_tokens=r.max_tokens, ignore_eos=True)
            engine.add_request(r.request_id, list(r.prompt_token_ids), params)
            i += 1
        before = engine.stats.steps
        outs = engine.step().outputs
        if engine.stats.steps == before:
            raise RuntimeError(
                f"the engine scheduled nothing with {engine.scheduler.num_waiting} requests "
                "waiting: a prompt does not fit in the KV cache; raise --num-blocks or lower "
                "--scale"
            )
        rec = records[-1]
        dt = clock(rec)
        now += dt
        steps.append(rec)
        step_seconds.append(dt)
        for out in outs:
            new = len(out.token_ids) - seen[out.request_id]
            timings[out.request_id].token_times.extend([now] * new)
            seen[out.request_id] = len(out.token_ids)
    result = ReplayResult(list(timings.values()), steps, step_seconds)
    result.wall_seconds = time.perf_counter() - wall0
    return result
