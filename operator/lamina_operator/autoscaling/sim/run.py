"""Replay one trace through a controller (decide, or the per-pool HPAs) and score it.

Every `interval` seconds the controller sees what a metrics scrape would (Cluster.observe) and
sets each pool's replicas; the cluster ticks every second. After the last arrival the run goes
on (no new arrivals, controllers still running) until every request has finished. Scores:
- TTFT and TBT attainment: share of requests whose TTFT, and whose worst time between tokens
  (the fluid model's p99), meet the targets; `both` is the benchmark's SLO attainment;
- GPU-hours: every pod from creation to removal (starting and draining included);
- scaling actions: evaluations that changed a pool's replicas, summed over the pools.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ...api import AutoscalingPolicySpec
from ..decide import decide
from ..decision import HistoryEntry
from .cluster import Cluster
from .hpa import Hpa
from .profile import ServiceProfile
from .traces import Trace

DRAIN_LIMIT_SECONDS = 1800  # a run that cannot finish its backlog in this long stops anyway
HISTORY_ENTRIES = 480  # 2 h of 15 s evaluations: the operator keeps 2 h (HISTORY_SECONDS)


@dataclass
class Result:
    trace: str
    controller: str
    requests: int = 0
    ttft_attained: float = 0.0  # share, 0..1
    tbt_attained: float = 0.0
    both_attained: float = 0.0
    ttft_p90: float = 0.0
    tbt_p90: float = 0.0
    gpu_hours: float = 0.0
    actions: int = 0
    unfinished: int = 0
    lost: int = 0  # on pods removed when their drain timed out (never attained)
    reasons: dict[str, int] = field(default_factory=dict)
    # one row per evaluation: (t, prefill, decode, TTFT p90 of the interval, TBT p90)
    timeline: list[tuple[float, int, int, float, float]] = field(default_factory=list)


def _p90(values: list[float]) -> float:
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, int(0.9 * len(values)))]


class DecideController:
    name = "decide"

    def __init__(self, policy: AutoscalingPolicySpec):
        self.policy = policy
        self.history: list[HistoryEntry] = []
        self.reasons: dict[str, int] = {}

    def __call__(self, obs) -> dict[str, int]:
        self.decision = dec = decide(self.policy, obs, self.history)
        self.reasons[dec.reason] = self.reasons.get(dec.reason, 0) + 1
        return dec.desired()

    def written(self, replicas: dict[str, int]) -> None:
        """What each pool was left at (a drain counts as gone; a larger scale-in waits): the
        operator records that, not `desired` (autoscaler.py)."""
        entry = self.decision.history_entry(applied=True, written=replicas)
        self.history = (self.history + [entry])[-HISTORY_ENTRIES:]


class HpaController:
    def __init__(
        self, policy: AutoscalingPolicySpec, profile: ServiceProfile, variant: str = "hpa"
    ):
        self.name = variant
        per_pod_tokens = profile.prefill_tokens_per_second * policy.backlog_target_seconds
        decode_target = 0.8
        if variant == "hpa-tuned" and policy.tbt is not None:
            # the batch whose step meets the TBT target, as a share of max_num_seqs
            room = policy.tbt.target_milliseconds / 1000 - profile.decode_step_seconds
            batch = max(1.0, room / profile.decode_step_per_sequence)
            decode_target = min(1.0, batch / profile.decode_max_sequences)
        recipe = variant == "hpa-recipe"
        self.hpas = {
            "prefill": Hpa("prefill", per_pod_tokens, policy.prefill.min_replicas,
                           policy.prefill.max_replicas, recipe),
            "decode": Hpa("decode", decode_target, policy.decode.min_replicas,
                          policy.decode.max_replicas, recipe, max_sequences=profile.decode_max_sequences),
        }  # fmt: skip
        self.reasons: dict[str, int] = {}

    def __call__(self, obs) -> dict[str, int]:
        return {pool: hpa.decide(obs) for pool, hpa in self.hpas.items()}


class StaticController:
    """Fixed replicas, e.g. `static:4:8` (a pool sized once by hand)."""

    def __init__(self, prefill: int, decode: int):
        self.name = f"static:{prefill}:{decode}"
        self.want = {"prefill": prefill, "decode": decode}
        self.reasons: dict[str, int] = {}

    def __call__(self, obs) -> dict[str, int]:
        return dict(self.want)


def run_trace(
    trace: Trace,
    controller,
    profile: ServiceProfile,
    policy: AutoscalingPolicySpec,
    start: tuple[int, int] = (1, 2),
    seed: int = 0,
) -> Result:
    requests = trace.requests(seed)
    cluster = Cluster(profile, *start, drain_timeout=policy.drain.timeout_seconds)
    interval = policy.evaluation_interval_seconds
    result = Result(trace.name, controller.name, requests=len(requests))
    ttft_target = policy.ttft.target_milliseconds / 1000 if policy.ttft else float("inf")
    tbt_target = policy.tbt.target_milliseconds / 1000 if policy.tbt else float("inf")
    pod_seconds, i, t = 0.0, 0, 0
    seen_done = 0
    while True:
        while i < len(requests) and requests[i].arrival < t + 1:
            cluster.arrive(requests[i])
            i += 1
        cluster.tick(float(t), 1.0)
        pod_seconds += cluster.pods_alive() * profile.gpus_per_pod
        t += 1
        if t % interval == 0:
            obs = cluster.observe(float(t), float(interval))
            want = controller(obs)
            written = {}
            for name, pool in cluster.pools().items():
                written[name] = pool.scale_to(want[name], float(t))
                if written[name] != obs.pools[name].desired:
                    result.actions += 1
            if hasattr(controller, "written"):
                controller.written(written)
            recent = cluster.done[seen_done:]
            seen_done = len(cluster.done)
            result.timeline.append(
                (t, len(cluster.prefill.live()), len(cluster.decode.live()),
                 _p90([j.first_token - j.req.arrival for j in recent]),
                 _p90([j.max_step for j in recent]))
            )  # fmt: skip
        if i == len(requests) and len(cluster.done) + len(cluster.lost) == len(requests):
            break
        if t > trace.duration + DRAIN_LIMIT_SECONDS:
            break
    done = cluster.done
    result.lost = len(cluster.lost)
    result.unfinished = len(requests) - len(done) - result.lost
    ttft = [j.first_token - j.req.arrival for j in done]
    tbt = [j.max_step for j in done]
    n = max(len(requests), 1)
    result.ttft_attained = sum(v <= ttft_target for v in ttft) / n
    result.tbt_attained = sum(v <= tbt_target for v in tbt) / n
    result.both_attained = sum(a <= ttft_target and b <= tbt_target for a, b in zip(ttft, tbt)) / n
    result.ttft_p90, result.tbt_p90 = _p90(ttft), _p90(tbt)
    result.gpu_hours = pod_seconds / 3600
    result.reasons = dict(controller.reasons)
    return result
