"""KVTransport: the interface between a prefill pod that ships KV and a decode pod that loads it.

Unit = (request, layer group). The prefill side calls `put` once per group as soon as the group
is computed (the last one carries the first sampled token); the decode side calls `wait_group`
per group with a deadline and gets the blob back (decode it with `wire.decode_kv`). Nothing
waits forever: a group that does not arrive in time raises KVTimeout, one that arrived but
whose object is gone raises KVMissing, a broken store raises KVTransportError. All of them are
KVTransferError, on which the decode side recomputes the prefill.

Keys (docs/design.md §3.7), `{prefix}` defaulting to "lamina":
    {prefix}:kv:{deployment}:{request_id}:g{group}         the blob (or :p{i} parts of it), TTL
    {prefix}:kvready:{deployment}:{request_id}             readiness stream, one entry per group
    {prefix}:kvprogress:{deployment}:{request_id}          the prefill's progress notice, TTL

Progress notices (serving/kv_progress.py) let the decode side tell a slow prefill from a dead
one or a store that lost the KV: the prefill renews a notice while it works on the request (a
beat counter), and the decode side reads it with `progress`. A notice lives as long as the
readiness record, so a store evicting by TTL drops it no sooner than the KV. A backend that
does not keep notices leaves `tracks_progress` False; its readers wait out their deadline.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace

MAX_REQUEST_ID_LEN = 256


@dataclass(frozen=True)
class ReadyEntry:
    """One readiness record: group `group` is stored as `parts` objects totalling `nbytes`."""

    group: int
    parts: int
    nbytes: int
    last: bool
    first_token: int | None


@dataclass(frozen=True)
class KVReadiness:
    """What the decode side knows about a request's KV without waiting."""

    groups: tuple[int, ...]  # announced groups, in arrival order
    last_group: int | None  # the group flagged `last`, once announced
    first_token: int | None  # carried by the last group

    @property
    def complete(self) -> bool:
        """The last group and every group below it have been announced."""
        return self.last_group is not None and set(range(self.last_group + 1)) <= set(self.groups)

    @classmethod
    def from_entries(cls, entries: list[ReadyEntry]) -> KVReadiness:
        last = next((e for e in entries if e.last), None)
        return cls(
            groups=tuple(dict.fromkeys(e.group for e in entries)),
            last_group=None if last is None else last.group,
            first_token=None if last is None else last.first_token,
        )


PROGRESS_STATES = ("working", "shipped", "failed")


@dataclass(frozen=True)
class KVProgress:
    """What the store holds about one request's KV right now (`KVTransport.progress`).

    `state`, `groups` and `beat` are the prefill's notice, all None once it is gone (deleted,
    expired, or never written): "working" while it computes and ships, "shipped" once every
    group is put, "failed" when it gave up; `groups` = how many leading groups [0, groups) it
    has put; `beat` grows at each renewal. `announced` = the groups in the readiness record,
    in arrival order."""

    state: str | None
    groups: int | None
    beat: int | None
    announced: tuple[int, ...]


@dataclass
class TransferStats:
    """Counters a backend keeps (bytes of blobs, wall seconds, objects = stored objects/parts)."""

    put_bytes: int = 0
    put_objects: int = 0
    put_seconds: float = 0.0
    get_bytes: int = 0
    get_objects: int = 0
    get_seconds: float = 0.0
    failures: int = 0
    failure_kinds: dict[str, int] = field(default_factory=dict)  # exception class -> count

    def record_put(self, nbytes: int, objects: int, seconds: float) -> None:
        self.put_bytes += nbytes
        self.put_objects += objects
        self.put_seconds += seconds

    def record_get(self, nbytes: int, objects: int, seconds: float) -> None:
        self.get_bytes += nbytes
        self.get_objects += objects
        self.get_seconds += seconds

    def record_failure(self, error: BaseException) -> None:
        self.failures += 1
        kind = type(error).__name__
        self.failure_kinds[kind] = self.failure_kinds.get(kind, 0) + 1

    def snapshot(self) -> TransferStats:
        return replace(self, failure_kinds=dict(self.failure_kinds))


def check_request_id(request_id: str) -> None:
    if not isinstance(request_id, str) or not request_id:
        raise ValueError(f"request_id must be a non-empty string, got {request_id!r}")
    if len(request_id) > MAX_REQUEST_ID_LEN or any(c.isspace() for c in request_id):
        raise ValueError(
            f"request_id {request_id[:40]!r} must be at most {MAX_REQUEST_ID_LEN} characters "
            "with no whitespace"
        )


def check_group(group: int) -> None:
    if not isinstance(group, int) or isinstance(group, bool) or group < 0:
        raise ValueError(f"layer group must be an int >= 0, got {group!r}")


def check_first_token(first_token: int | None) -> None:
    if first_token is not None and (
        not isinstance(first_token, int) or isinstance(first_token, bool) or first_token < 0
    ):
        raise ValueError(f"first_token must be a token id >= 0 or None, got {first_token!r}")


def check_progress(state: str, groups: int, beat: int) -> None:
    if state not in PROGRESS_STATES:
        raise ValueError(f"progress state must be one of {PROGRESS_STATES}, got {state!r}")
    check_group(groups)
    check_group(beat)


def check_deadline(deadline_s: float) -> None:
    if not (isinstance(deadline_s, (int, float)) and math.isfinite(deadline_s)) or deadline_s < 0:
        raise ValueError(f"deadline_s must be a finite number of seconds >= 0, got {deadline_s!r}")


class KVTransport(ABC):
    """Ships KV blobs of (request, layer group) from prefill to decode. Async; one event loop.

    `deployment` namespaces the keys so several ServingDeployments can share one store.
    """

    def __init__(self, deployment: str, key_prefix: str = "lamina") -> None:
        if not deployment or any(c.isspace() or c == ":" for c in deployment):
            raise ValueError(f"deployment {deployment!r} must be non-empty, without ':' or spaces")
        if not key_prefix or any(c.isspace() for c in key_prefix):
            raise ValueError(f"key_prefix {key_prefix!r} must be non-empty, without spaces")
        self.deployment = deployment
        self.key_prefix = key_prefix
        self.stats = TransferStats()

    def kv_key(self, request_id: str, group: int) -> str:
        return f"{self.key_prefix}:kv:{self.deployment}:{request_id}:g{group}"

    def ready_key(self, request_id: str) -> str:
        return f"{self.key_prefix}:kvready:{self.deployment}:{request_id}"

    def progress_key(self, request_id: str) -> str:
        return f"{self.key_prefix}:kvprogress:{self.deployment}:{request_id}"

    tracks_progress = False  # True where note_progress / progress are implemented

    async def note_progress(
        self, request_id: str, state: str, groups: int, beat: int, create: bool
    ) -> None:
        """Set the prefill's progress notice of `request_id` (see KVProgress), kept as long as
        its readiness record. `create=False` only replaces a notice that is still there: one
        the decode side deleted, or a store flushed, stays gone. A backend without notices
        ignores the call."""
        return None

    async def progress(self, request_id: str) -> KVProgress:
        """The notice and the announced groups of `request_id`, read at once (no wait)."""
        raise NotImplementedError(f"{type(self).__name__} keeps no progress notices")

    @abstractmethod
    async def put(
        self,
        request_id: str,
        group: int,
        blob: bytes | bytearray | memoryview,
        *,
        last: bool = False,
        first_token: int | None = None,
    ) -> None:
        """Store `blob` as group `group` of `request_id` and announce it; the last group of a
        request passes `last=True` and the first sampled token."""

    @abstractmethod
    async def wait_group(self, request_id: str, group: int, deadline_s: float) -> bytes:
        """The blob of group `group`, waiting at most `deadline_s` seconds from now for it.

        Raises KVTimeout if it is not announced in time, KVMissing if it was announced but its
        object is gone, KVTransportError if the store fails.
        """

    @abstractmethod
    async def groups_ready(self, request_id: str) -> KVReadiness:
        """Which groups of `request_id` are announced so far (does not wait)."""

    @abstractmethod
    async def delete(self, request_id: str) -> None:
        """Drop every object and the readiness record of `request_id` (after loading it)."""

    @abstractmethod
    async def close(self) -> None:
        """Release connections; the transport is unusable afterwards."""

    async def __aenter__(self) -> KVTransport:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
