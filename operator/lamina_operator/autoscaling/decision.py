"""The autoscaler's output and memory: a Decision per evaluation, a HistoryEntry kept of each.

A Decision carries every input and clamp that produced it, so status, Events and the
simulation can say why a pool has the size it has. History is what `decide` needs from earlier
evaluations: raw recommendations (stabilisation windows), what was written (to notice a manual
change), manual-change holds and the learned prefill capacity.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Signal:
    """One measured quantity against its target; ratio > 1 means the pool is short."""

    name: str  # ttft, tbt (latency, seconds); backlog (seconds); utilization, kv (0..1)
    value: float
    target: float
    latency: bool
    pods: int  # the pods `value` is spread over: replicas needed = ceil(pods * ratio)
    # A latency is acted on only while queueing shows in the pool (work waits, batches are
    # more than one): otherwise it is the service time itself and more pods cannot lower it.
    actionable: bool = True

    @property
    def ratio(self) -> float:
        return self.value / self.target if self.target > 0 else 0.0

    def describe(self) -> str:
        flag = "" if self.actionable else "(not load-bound)"
        return f"{self.name}={self.value:.3g}/{self.target:.3g}{flag}"


@dataclass(frozen=True)
class PoolDecision:
    current: int  # the Deployment's replicas before this decision
    ready: int
    starting: int
    signals: tuple[Signal, ...]
    recommended: int  # from the signals alone
    stabilized: int  # after the stabilisation windows
    desired: int  # after step, bounds, ratio and budget: what is (or would be) applied
    clamps: tuple[str, ...] = ()  # each rule that changed the number, in order, for people
    held: bool = False  # a manual change is being yielded to
    inputs: tuple[str, ...] = ()  # what a forecast signal was computed from, for people

    def describe(self) -> str:
        sig = " ".join(s.describe() for s in self.signals) or "no signals"
        if self.inputs:
            sig += " (" + "; ".join(self.inputs) + ")"
        clamps = f" [{'; '.join(self.clamps)}]" if self.clamps else ""
        return (
            f"{self.current}->{self.desired} (ready {self.ready}, starting {self.starting}; "
            f"{sig}; recommended {self.recommended}, stabilized {self.stabilized}){clamps}"
        )


@dataclass(frozen=True)
class HistoryEntry:
    time: float
    recommended: dict[str, int]  # raw recommendations per pool (stabilisation windows use them)
    applied: dict[str, int] | None  # replicas written per pool; None when nothing was written
    manual_since: dict[str, float] = field(default_factory=dict)  # pool -> yield hold start
    prefill_capacity: float | None = None  # tokens/s one prefill pod computes when saturated
    prefill_queued: float | None = None  # waiting prompt tokens then (for the arrival rate)
    # pool -> scale-down window learned from demand that came back after a scale-down (seconds)
    scale_down_seconds: dict[str, float] = field(default_factory=dict)
    decode_capacity: float | None = None  # output tokens/s a decode pod makes within TBT


@dataclass(frozen=True)
class Decision:
    time: float
    mode: str  # active or advisory
    reason: str  # one CamelCase word
    pools: dict[str, PoolDecision]
    gpus_before: int
    gpus_after: int
    gpu_budget: int | None
    manual_changes: tuple[str, ...] = ()  # pools whose replicas someone else changed just now
    manual_since: dict[str, float] = field(default_factory=dict)
    prefill_capacity: float | None = None
    prefill_queued: float | None = None
    notes: tuple[str, ...] = ()  # deployment-wide clamps (budget, ratio) and metric problems
    scale_down_seconds: dict[str, float] = field(default_factory=dict)  # learned, per pool
    decode_capacity: float | None = None  # output tokens/s a decode pod makes within TBT

    @property
    def apply(self) -> bool:
        """Whether the caller should write `desired` (active mode and something changes)."""
        return self.mode == "active" and self.changed

    @property
    def changed(self) -> bool:
        return any(p.desired != p.current for p in self.pools.values())

    def desired(self) -> dict[str, int]:
        return {name: p.desired for name, p in self.pools.items()}

    def message(self) -> str:
        parts = [f"{name} {p.describe()}" for name, p in self.pools.items()]
        budget = f"/{self.gpu_budget}" if self.gpu_budget is not None else ""
        parts.append(f"gpus {self.gpus_before}->{self.gpus_after}{budget}")
        if self.manual_changes:
            parts.append("manual change of " + ", ".join(self.manual_changes))
        parts += list(self.notes)
        prefix = "advisory (not applied): " if self.mode == "advisory" else ""
        return prefix + "; ".join(parts)

    def history_entry(self, applied: bool, written: dict[str, int] | None = None) -> HistoryEntry:
        """What to remember; `applied` says whether the decision was acted on, `written` the
        replicas each pool was left at (default `desired`; a drained scale-in goes one pod at
        a time and counts the pod being drained as gone)."""
        return HistoryEntry(
            time=self.time,
            recommended={name: p.recommended for name, p in self.pools.items()},
            applied=(written or self.desired()) if applied else None,
            manual_since=dict(self.manual_since),
            prefill_capacity=self.prefill_capacity,
            prefill_queued=self.prefill_queued,
            scale_down_seconds=dict(self.scale_down_seconds),
            decode_capacity=self.decode_capacity,
        )
