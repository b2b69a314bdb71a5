"""Errors of the KV-transfer layer.

Every one of them means "this request's KV cannot be used": the decode side catches
`KVTransferError` and recomputes the prefill itself (docs/design.md §3.6 step 4), so a request is
slower, never lost and never wrong.
"""

from __future__ import annotations


class KVTransferError(Exception):
    """Base class: the KV of a request cannot be delivered; recompute the prefill."""


class KVCorrupt(KVTransferError):
    """A blob is not a valid KV blob: bad magic or version, truncated, or checksum mismatch."""


class KVMissing(KVTransferError):
    """A group was announced as ready but its object is gone (TTL expired or deleted)."""


class KVTimeout(KVTransferError):
    """A group did not arrive before the caller's deadline."""


class KVTransportError(KVTransferError):
    """The transport itself failed: the store is unreachable, refused AUTH, or timed out."""


class KVStalled(KVTimeout):
    """The prefill stopped giving progress notices (frozen, dead, or never got the request)."""


class KVLost(KVMissing):
    """The store dropped KV or a progress notice before its time (FLUSHALL, eviction, restart)."""


class PrefillFailed(KVTransferError):
    """The prefill of this KV failed (its own notice, or the router's): the rest never comes."""
