"""The prefill and decode pools as queues, advanced one tick (dt seconds) at a time.

Prefill pods are FIFO servers of prompt tokens (the router sends each request to the pod with
the least outstanding tokens; with no ready pod it waits at the router). A finished prompt
reaches the decode pool after the KV hop and is admitted, FIFO, to the ready decode pod with
the lowest KV use that has a free slot and room for its prompt + output tokens; otherwise it
waits at the router. Decode pods step their whole running batch: one token per sequence per
step of profile.step_seconds(batch). Within a tick every quantity is exact for prefill (FIFO
with known arrival times) and fluid for decode (a sequence makes dt/step tokens).

Pods: created -> Ready after startup_seconds -> warming (slower) for warmup_seconds. Scaling
in is the operator's (drain.py, scale_in.py), one drain per pool at a time: pods still starting
go at once (what a ReplicaSet deletes first); the rest of the reduction is one drained ready pod
(the least outstanding work), which takes no new work and goes when empty, or when the drain
timeout passes (its unfinished requests are lost: `Cluster.lost`). While a pool drains a pod, a
lower count changes nothing (the operator scales in further at later evaluations); a higher one
cancels the drain first (the drained pod serves again) and starts pods for the rest. GPU time
is counted until a pod is removed. Every controller is scored with the same scale-in.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from ..observation import Observation, PodSample, PoolObservation, RouterSample
from .profile import ServiceProfile
from .traces import Request

# The engine's latency buckets, seconds: a copy of LATENCY_BUCKETS in
# engine/lamina_engine/serving/metrics.py (the operator may not import the engine);
# tests/operator/test_latency_buckets.py keeps the two equal.
BUCKETS = (
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.06, 0.075, 0.1,
    0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 5.0, 7.5, 10.0, 20.0, 30.0, 60.0,
    float("inf"),
)  # fmt: skip


def histogram(samples: list[tuple[float, float]]):
    """Cumulative (bound, count) from (value, weight) samples."""
    counts = [0.0] * len(BUCKETS)
    for value, weight in samples:
        for i, bound in enumerate(BUCKETS):
            if value <= bound:
                counts[i] += weight
                break
    total, out = 0.0, []
    for bound, c in zip(BUCKETS, counts):
        total += c
        out.append((bound, total))
    return tuple(out)


@dataclass
class Job:
    req: Request
    remaining_prefill: float
    remaining_output: float
    decode_ready: float = 0.0  # when its KV reached the decode pool
    admitted: float | None = None
    first_token: float | None = None
    finished: float | None = None
    max_step: float = 0.0


@dataclass
class Pod:
    name: str
    created: float
    ready_at: float
    draining: bool = False
    drain_started: float = 0.0
    queue: deque = field(default_factory=deque)  # prefill: Jobs, FIFO
    running: list = field(default_factory=list)  # decode: Jobs
    kv_reserved: int = 0
    samples: list = field(default_factory=list)  # (latency, weight) since the last scrape
    tokens: float = 0.0  # tokens computed since the last scrape
    busy: float = 0.0  # seconds spent computing since the last scrape
    finished: int = 0  # requests finished since the last scrape (decode)
    finished_tokens: int = 0  # their output tokens

    def ready(self, now: float) -> bool:
        return now >= self.ready_at

    def outstanding(self) -> float:
        return sum(j.remaining_prefill for j in self.queue) + sum(
            j.remaining_output for j in self.running
        )


class Pool:
    def __init__(self, role: str, replicas: int, profile: ServiceProfile):
        self.role, self.profile = role, profile
        self.pods: list[Pod] = [Pod(f"{role}-{i}", -1e9, -1e9) for i in range(replicas)]
        self._next = replicas

    def live(self) -> list[Pod]:
        return [p for p in self.pods if not p.draining]

    def serving(self, now: float) -> list[Pod]:
        return [p for p in self.pods if not p.draining and p.ready(now)]

    def warming(self, pod: Pod, now: float) -> bool:
        return pod.ready(now) and now < pod.ready_at + self.profile.warmup_seconds

    def draining(self) -> Pod | None:
        return next((p for p in self.pods if p.draining), None)

    def scale_to(self, n: int, now: float) -> int:
        """Ask for n replicas; returns what the pool counts now (the drained pod not counted),
        which is what the operator records: a larger scale-in goes one drain at a time."""
        live, drained = self.live(), self.draining()
        if n > len(live) and drained is not None:  # demand rose: the drained pod serves again
            drained.draining = False
            live, drained = self.live(), None
        for _ in range(n - len(live)):
            self.pods.append(
                Pod(f"{self.role}-{self._next}", now, now + self.profile.startup_seconds)
            )
            self._next += 1
        excess = len(live) - n
        if excess <= 0 or drained is not None:
            return len(self.live())
        starting = [p for p in live if not p.ready(now)]
        for pod in starting[::-1][:excess]:
            self.pods.remove(pod)
            excess -= 1
        ready = sorted((p for p in self.live() if p.ready(now)), key=Pod.outstanding)
        if excess > 0 and ready:
            ready[0].draining, ready[0].drain_started = True, now
        return len(self.live())

    def reap(self, now: float, timeout: float) -> list[Job]:
        """Remove drained pods that are empty or past the drain timeout; returns the jobs the
        latter still held (lost: the operator removes the pod anyway)."""
        lost: list[Job] = []
        keep = []
        for pod in self.pods:
            if pod.draining and (not (pod.queue or pod.running)
                                 or now - pod.drain_started >= timeout):  # fmt: skip
                lost += list(pod.queue) + pod.running
            else:
                keep.append(pod)
        self.pods = keep
        return lost


class Cluster:
    def __init__(
        self, profile: ServiceProfile, prefill: int, decode: int, drain_timeout: float = 120.0
    ):
        self.profile, self.drain_timeout = profile, drain_timeout
        self.prefill = Pool("prefill", prefill, profile)
        self.decode = Pool("decode", decode, profile)
        self.router_prefill: deque[Job] = deque()  # no ready prefill pod
        self.router_decode: deque[Job] = deque()  # KV shipped, no decode slot yet
        self.done: list[Job] = []
        self.lost: list[Job] = []  # on a pod removed when its drain timed out

    def pools(self) -> dict[str, Pool]:
        return {"prefill": self.prefill, "decode": self.decode}

    def pods_alive(self) -> int:
        return len(self.prefill.pods) + len(self.decode.pods)

    def arrive(self, req: Request) -> None:
        self.router_prefill.append(Job(req, float(req.prompt), float(req.output)))

    def tick(self, now: float, dt: float) -> None:
        self._route_prefill(now)
        for pod in self.prefill.pods:
            self._prefill(pod, now, dt)
        self._admit(now, dt)
        for pod in self.decode.pods:
            self._decode(pod, now, dt)
        for pool in (self.prefill, self.decode):
            self.lost += pool.reap(now + dt, self.drain_timeout)

    def _route_prefill(self, now: float) -> None:
        pods = self.prefill.serving(now)
        while pods and self.router_prefill:
            job = self.router_prefill.popleft()
            min(pods, key=Pod.outstanding).queue.append(job)

    def _prefill(self, pod: Pod, now: float, dt: float) -> None:
        if not pod.ready(now):
            return
        rate = self.profile.prefill_tokens_per_second
        if self.prefill.warming(pod, now):
            rate /= self.profile.warmup_slowdown
        cursor, end = now, now + dt
        while pod.queue and cursor < end:
            job = pod.queue[0]
            cursor = max(cursor, job.req.arrival)
            if cursor >= end:
                break
            finish = cursor + job.remaining_prefill / rate
            if finish > end:
                pod.tokens += (end - cursor) * rate
                pod.busy += end - cursor
                job.remaining_prefill -= (end - cursor) * rate
                break
            pod.tokens += job.remaining_prefill
            pod.busy += finish - cursor
            job.remaining_prefill = 0.0
            pod.queue.popleft()
            pod.samples.append((finish - job.req.arrival, 1.0))
            job.decode_ready = finish + self.profile.kv_hop_seconds
            self.router_decode.append(job)
            cursor = finish

    def _admit(self, now: float, dt: float) -> None:
        cap, slots = self.profile.decode_kv_tokens, self.profile.decode_max_sequences
        while self.router_decode and self.router_decode[0].decode_ready < now + dt:
            job = self.router_decode[0]
            need = job.req.prompt + job.req.output
            fits = [
                p
                for p in self.decode.serving(now)
                if len(p.running) < slots and p.kv_reserved + need <= cap
            ]
            if not fits:
                return
            pod = min(fits, key=lambda p: p.kv_reserved)
            self.router_decode.popleft()
            job.admitted = max(now, job.decode_ready)
            pod.running.append(job)
            pod.kv_reserved += need

    def _decode(self, pod: Pod, now: float, dt: float) -> None:
        if not pod.running:
            return
        step = self.profile.step_seconds(len(pod.running), self.decode.warming(pod, now))
        end, still = now + dt, []
        for job in pod.running:
            start = max(now, job.admitted)
            if job.first_token is None:
                job.first_token = start + step
            tokens = (end - start) / step
            job.max_step = max(job.max_step, step)
            made = min(tokens, job.remaining_output)
            pod.tokens += made
            pod.samples.append((step, made))
            job.remaining_output -= made
            if job.remaining_output <= 1e-9:
                job.finished = start + (made * step)
                pod.kv_reserved -= job.req.prompt + job.req.output
                pod.finished += 1
                pod.finished_tokens += job.req.output
                self.done.append(job)
            else:
                still.append(job)
        pod.running = still

    # -- what a metrics scrape would see -----------------------------------------------------
    def observe(self, now: float, window: float) -> Observation:
        pools = {}
        for name, pool in self.pools().items():
            samples = []
            for pod in pool.serving(now):
                samples.append(self._sample(name, pod, now, window))
            for pod in pool.pods:  # a scrape resets what each pod accumulated
                pod.samples, pod.tokens, pod.busy = [], 0.0, 0.0
                pod.finished = pod.finished_tokens = 0
            live = pool.live()
            ready = len(pool.serving(now))
            pools[name] = PoolObservation(
                desired=len(live),
                ready=ready,
                starting=len(live) - ready,
                gpus_per_replica=self.profile.gpus_per_pod,
                pods=tuple(samples),
            )
        waiting_decode = sum(1 for j in self.router_decode if j.decode_ready <= now)
        router = RouterSample(
            queued_prefill_tokens=sum(j.remaining_prefill for j in self.router_prefill),
            queued_decode_requests=float(waiting_decode),
        )
        return Observation(now=now, pools=pools, router=router)

    def _sample(self, role: str, pod: Pod, now: float, window: float) -> PodSample:
        hist = histogram(pod.samples)
        if role == "prefill":
            return PodSample(
                pod.name,
                now - pod.ready_at,
                ttft=hist,
                # waiting = not yet started, as the engine reports it (the head is computing)
                queued_prefill_tokens=sum(j.remaining_prefill for j in list(pod.queue)[1:]),
                waiting_requests=float(max(len(pod.queue) - 1, 0)),
                prefill_tokens_per_second=pod.tokens / window,
                busy_fraction=pod.busy / window,
            )
        return PodSample(
            pod.name,
            now - pod.ready_at,
            tbt=hist,
            running=float(len(pod.running)),
            kv_utilization=pod.kv_reserved / self.profile.decode_kv_tokens,
            decode_tokens_per_second=pod.tokens / window,
            finished_per_second=pod.finished / window,
            finished_output_tokens_per_second=pod.finished_tokens / window,
        )
