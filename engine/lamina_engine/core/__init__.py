"""The scheduler core: block manager, policies, scheduler. Pure Python (no torch)."""

from .block_manager import BlockManager, NoFreeBlocksError, block_hashes, hash_block
from .layered import LayeredPolicy
from .output import CohortStep, ScheduledChunk, SchedulerOutput
from .policies import ChunkedPolicy, SchedulerState, SchedulingPolicy
from .scheduler import POLICIES, RequestRejectedError, Scheduler
from .scheduler_config import POLICY_NAMES, SchedulerConfig

__all__ = [
    "POLICIES",
    "POLICY_NAMES",
    "BlockManager",
    "ChunkedPolicy",
    "CohortStep",
    "LayeredPolicy",
    "NoFreeBlocksError",
    "RequestRejectedError",
    "ScheduledChunk",
    "Scheduler",
    "SchedulerConfig",
    "SchedulerOutput",
    "SchedulerState",
    "SchedulingPolicy",
    "block_hashes",
    "hash_block",
]
