"""SchedulerConfig: the scheduler's settings, validated once. No torch.

Its own module so the policies (policies.py, layered.py) and the scheduler all read it without
importing one another. Policy names are listed here rather than taken from the policy classes
for the same reason; scheduler.py maps each name to its class (tests/engine/test_scheduler.py
checks the two lists agree).
"""

from __future__ import annotations

from dataclasses import dataclass

from .speed_layout import SpeedLayout

# The scheduling policies (`SchedulerConfig.scheduling_policy`): Sarathi-style chunked prefill, and
# layered prefill (core/layered.py).
POLICY_NAMES = ("chunked", "layered")


@dataclass
class SchedulerConfig:
    num_blocks: int  # KV cache blocks in the pool (sized by the runner from free memory)
    max_model_len: int  # longest prompt + output, in tokens
    max_num_seqs: int = 256  # most running sequences at once
    max_num_batched_tokens: int = 512  # tau: tokens per step (decodes + prefill chunks)
    block_size: int = 16  # tokens per KV block
    enable_prefix_caching: bool = True
    scheduling_policy: str = "chunked"  # one of POLICY_NAMES (EngineConfig names it the same)
    # layered policy: B, the most prompt tokens in one cohort; Gmax; the per-group work size u
    # behind the G buckets (T <= u, 2u, 4u, 8u -> 1, 2, 4, 8 groups); the model's layer count
    # (with SPEED: K, since a cohort's groups split the lower layers [0, K) only).
    layered_budget: int = 8192
    layered_max_groups: int = 16
    layered_group_tokens: int = 512
    num_layers: int | None = None
    speed: SpeedLayout | None = None  # SPEED: two KV pools, full-depth tokens (speed_layout.py)

    def __post_init__(self) -> None:
        names = ("num_blocks", "max_model_len", "max_num_seqs", "max_num_batched_tokens")
        names += ("layered_budget", "layered_max_groups", "layered_group_tokens")
        for name in names:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {self.block_size}")
        if self.max_num_batched_tokens < self.max_num_seqs:
            # every running decode needs one token of the budget each step
            raise ValueError(
                f"max_num_batched_tokens ({self.max_num_batched_tokens}) must be >= "
                f"max_num_seqs ({self.max_num_seqs}); raise the budget or lower max_num_seqs"
            )
        if self.scheduling_policy not in POLICY_NAMES:
            raise ValueError(
                f"unknown scheduling policy {self.scheduling_policy!r}; choose one of {sorted(POLICY_NAMES)}"
            )
        if self.speed is not None:
            k = self.speed.prefill_layers
            if self.num_layers not in (None, k):
                raise ValueError(
                    f"with SPEED, num_layers is the layers the layered policy splits into groups, "
                    f"the lower K = {k}; got {self.num_layers}"
                )
            self.num_layers = k
        if self.scheduling_policy == "layered" and (self.num_layers is None or self.num_layers < 1):
            raise ValueError(
                f"the layered policy splits the model's layers into groups: set num_layers "
                f"(>= 1, the model's decoder layer count), got {self.num_layers}"
            )
