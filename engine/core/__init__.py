"""The scheduler core: block manager, policies, scheduler. Pure Python (no torch)."""

from .block_manager import BlockManager, NoFreeBlocksError, block_hashes, hash_block
from .output import ScheduledChunk, SchedulerOutput
from .policies import POLICIES, ChunkedPolicy, SchedulerState, SchedulingPolicy
from .scheduler import RequestRejectedError, Scheduler, SchedulerConfig

__all__ = [
    "POLICIES",
    "BlockManager",
    "ChunkedPolicy",
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
