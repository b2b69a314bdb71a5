"""Access to the Kubernetes API behind a small protocol (real and in-memory implementations)."""

from .client import AlreadyExists, KubeClient, KubeError, NotFound, merge_diff, merge_patch
from .memory import MemoryKubeClient

__all__ = [
    "AlreadyExists",
    "KubeClient",
    "KubeError",
    "MemoryKubeClient",
    "NotFound",
    "merge_diff",
    "merge_patch",
]
