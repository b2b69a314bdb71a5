"""The prefill side's staging buffer for the NIXL backend: one registered region, carved up.

NIXL (UCX) needs memory registered before a peer can READ it, and a peer learns a region's
remote key from the agent metadata it loaded: registering one buffer up front (like vLLM
registers its KV cache) means the decode side loads the metadata once, not per group.
`StagingBuffer` hands out byte ranges of that buffer to blobs: first fit over the gaps between
live ranges, 64-byte aligned. Not thread-safe: the transport uses it from one event loop.
"""

from __future__ import annotations

import bisect

import numpy as np

ALIGN = 64  # bytes; keeps every blob cache-line aligned for the NIC and memcpy


class StagingFull(Exception):
    """No gap of the requested size is free in the staging buffer."""


class StagingBuffer:
    """`capacity` bytes of host memory (uint8 numpy array), allocations by offset."""

    def __init__(self, capacity: int) -> None:
        if not isinstance(capacity, int) or capacity < ALIGN:
            raise ValueError(f"staging capacity {capacity!r} must be an int >= {ALIGN} bytes")
        self.capacity = capacity
        self.array = np.empty(capacity, dtype=np.uint8)
        # Fault every page in now (np.zeros would map them lazily): the first 64 MiB READ into
        # untouched pages took ~0.8 s here instead of ~25 ms.
        self.array.fill(0)
        self.address = int(self.array.ctypes.data)
        self._starts: list[int] = []  # sorted offsets of live ranges
        self._sizes: dict[int, int] = {}  # offset -> reserved (aligned) size

    @property
    def used(self) -> int:
        return sum(self._sizes.values())

    def alloc(self, nbytes: int) -> int:
        """The offset of a free range of `nbytes` (rounded up to ALIGN); raises StagingFull."""
        size = max(ALIGN, -(-nbytes // ALIGN) * ALIGN)
        cursor = 0
        for start in self._starts:
            if start - cursor >= size:
                break
            cursor = start + self._sizes[start]
        if self.capacity - cursor < size:
            raise StagingFull(
                f"{nbytes} bytes do not fit: {self.used} of {self.capacity} staging bytes in use"
            )
        bisect.insort(self._starts, cursor)
        self._sizes[cursor] = size
        return cursor

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        self.array[offset : offset + len(view)] = np.frombuffer(view, dtype=np.uint8)

    def free(self, offset: int) -> None:
        if self._sizes.pop(offset, None) is not None:
            self._starts.remove(offset)
