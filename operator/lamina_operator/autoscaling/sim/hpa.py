"""The baseline: one Kubernetes HPA per pool, on queue (prefill) and KV utilisation (decode).

What llm-d and KServe users run (research/operators-landscape.md, llm-d's KEDA recipe): the
prefill pool scales on its queued prompt work, the decode pool on KV-cache utilisation, each
pool alone. The HPA algorithm (kube-controller-manager, autoscaling/v2):
- desired = ceil(total / target per pod) (AverageValue: prefill on queued tokens, decode on
  the larger of KV and batch utilisation, with requests waiting for a slot counted as batch),
  no change while |ratio - 1| <= 0.1;
- default behavior: scale-up with no window, at most max(100%, 4 pods) per 15 s; scale-down
  to the highest recommendation over 300 s, at most 100% per 15 s;
- `recipe` behavior, the llm-d KEDA recipe's: +1 pod per 180 s, -1 pod per 300 s.
Targets: `hpa` uses the recipes' 80% for decode; `hpa-tuned` is a user who profiled the engine
and set the decode target to the batch at which the step time meets the TBT target (so the HPA
holds TBT in steady state). Prefill in both: queued tokens per pod = prefill rate x the
policy's backlog target (0.25 s, the same as decide's).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..observation import Observation


@dataclass
class Hpa:
    pool: str
    target: float
    min_replicas: int
    max_replicas: int
    recipe: bool = False
    history: list[tuple[float, int]] = field(default_factory=list)
    last_up: float = -1e9
    last_down: float = -1e9

    max_sequences: int = 64  # decode: the engine's max_num_seqs, for batch utilisation

    def metric(self, obs: Observation) -> float:
        """prefill: total queued tokens / target per pod; decode: sum over pods of the larger
        of KV utilisation and batch utilisation (running / max_num_seqs), / target."""
        pool = obs.pools[self.pool]
        if self.pool == "prefill":
            total = sum(p.queued_prefill_tokens for p in pool.pods)
            return (total + obs.router.queued_prefill_tokens) / self.target
        waiting = obs.router.queued_decode_requests / self.max_sequences
        used = sum(max(p.kv_utilization, p.running / self.max_sequences) for p in pool.pods)
        return (used + waiting) / self.target

    def decide(self, obs: Observation) -> int:
        pool = obs.pools[self.pool]
        current, ready = pool.desired, pool.ready
        needed = self.metric(obs)  # replicas that would put the average exactly at target
        ratio = needed / ready if ready else (math.inf if needed else 1.0)
        rec = current
        if abs(ratio - 1) > 0.1:
            # AverageValue over all pods: pods still starting are counted in `current`
            rec = math.ceil(needed - 1e-9)
        rec = max(self.min_replicas, min(self.max_replicas, rec))
        now = obs.now
        self.history = [(t, r) for t, r in self.history if t > now - 300] + [(now, rec)]
        if rec < current:
            rec = min(current, max(r for _, r in self.history))
        if self.recipe:
            if rec > current:
                rec = current + 1 if now - self.last_up >= 180 else current
            elif rec < current:
                rec = current - 1 if now - self.last_down >= 300 else current
        else:
            rec = min(rec, max(2 * current, current + 4))
        if rec > current:
            self.last_up = now
        elif rec < current:
            self.last_down = now
        return rec
