"""LocalKVTransport: the KV transport inside one process (tests, `lamina up` without Redis).

Same semantics as the Redis backend: objects and readiness records expire after their TTL,
every wait has a deadline. Several transports (a prefill engine and a decode engine, possibly
on different threads with their own event loops) share one `LocalKVStore`; a put wakes the
waiters of that request thread-safely through their loop.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field

from lamina_engine.transfer.base import (
    KVProgress,
    KVReadiness,
    KVTransport,
    ReadyEntry,
    check_deadline,
    check_first_token,
    check_group,
    check_progress,
    check_request_id,
)
from lamina_engine.transfer.errors import KVMissing, KVTimeout


@dataclass
class _Ready:
    entries: list[ReadyEntry]
    expires_at: float  # time.monotonic() seconds
    waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = field(default_factory=list)


class LocalKVStore:
    """The shared in-memory store: blobs and readiness records by key, with expiry times."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._objects: dict[str, tuple[bytes, float]] = {}  # key -> (blob, expires_at)
        self._ready: dict[str, _Ready] = {}
        # progress notices: key -> (state, groups, beat, expires_at)
        self._notes: dict[str, tuple[str, int, int, float]] = {}

    def _purge(self, now: float) -> None:
        # Called under the lock on every put: expired entries never outlive the next write.
        for key in [k for k, (_, exp) in self._objects.items() if exp <= now]:
            del self._objects[key]
        for key in [k for k, r in self._ready.items() if r.expires_at <= now and not r.waiters]:
            del self._ready[key]
        for key in [k for k, (*_, exp) in self._notes.items() if exp <= now]:
            del self._notes[key]

    def __len__(self) -> int:
        """Live objects (blobs) in the store."""
        now = time.monotonic()
        with self._lock:
            return sum(1 for _, exp in self._objects.values() if exp > now)


class LocalKVTransport(KVTransport):
    """In-process KVTransport. `ttl_s`: blob lifetime; `ready_ttl_s`: readiness record lifetime
    (default 2 x ttl_s, so a reader can tell "expired" (KVMissing) from "never sent")."""

    def __init__(
        self,
        deployment: str = "local",
        *,
        store: LocalKVStore | None = None,
        ttl_s: float = 300.0,
        ready_ttl_s: float | None = None,
        key_prefix: str = "lamina",
    ) -> None:
        super().__init__(deployment, key_prefix)
        if ttl_s <= 0 or (ready_ttl_s is not None and ready_ttl_s < ttl_s):
            raise ValueError(
                f"ttl_s={ttl_s} must be > 0 and ready_ttl_s={ready_ttl_s} at least ttl_s"
            )
        self.store = store if store is not None else LocalKVStore()
        self.ttl_s = ttl_s
        self.ready_ttl_s = ready_ttl_s if ready_ttl_s is not None else 2 * ttl_s
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("LocalKVTransport is closed; create a new one")

    async def put(self, request_id, group, blob, *, last=False, first_token=None) -> None:
        self._check_open()
        check_request_id(request_id)
        check_group(group)
        check_first_token(first_token)
        start = time.perf_counter()
        data = blob if isinstance(blob, bytes) else bytes(blob)
        entry = ReadyEntry(group, 1, len(data), bool(last), first_token)
        store, now = self.store, time.monotonic()
        with store._lock:
            store._purge(now)
            store._objects[self.kv_key(request_id, group)] = (data, now + self.ttl_s)
            ready = store._ready.get(self.ready_key(request_id))
            if ready is None or ready.expires_at <= now:
                waiters = ready.waiters if ready is not None else []
                ready = store._ready[self.ready_key(request_id)] = _Ready([], 0.0, waiters)
            ready.entries.append(entry)
            ready.expires_at = now + self.ready_ttl_s
            for loop, event in ready.waiters:
                try:
                    loop.call_soon_threadsafe(event.set)
                except RuntimeError:  # that waiter's loop is closed: nobody to wake
                    pass
        self.stats.record_put(len(data), 1, time.perf_counter() - start)

    def _entries(self, request_id: str, now: float) -> list[ReadyEntry]:
        ready = self.store._ready.get(self.ready_key(request_id))
        if ready is None or ready.expires_at <= now:
            return []
        return list(ready.entries)

    async def wait_group(self, request_id: str, group: int, deadline_s: float) -> bytes:
        self._check_open()
        check_request_id(request_id)
        check_group(group)
        check_deadline(deadline_s)
        start = time.perf_counter()
        loop = asyncio.get_running_loop()
        store, key = self.store, self.ready_key(request_id)
        event = asyncio.Event()
        try:
            while True:
                now = time.monotonic()
                with store._lock:
                    if any(e.group == group for e in self._entries(request_id, now)):
                        blob, exp = store._objects.get(self.kv_key(request_id, group), (None, 0))
                        if blob is None or exp <= now:
                            raise KVMissing(
                                f"KV group {group} of request {request_id!r} was announced but "
                                f"its object is gone (expired after ttl_s={self.ttl_s} or "
                                "deleted); recompute the prefill"
                            )
                        self.stats.record_get(len(blob), 1, time.perf_counter() - start)
                        return blob
                    ready = store._ready.setdefault(key, _Ready([], 0.0))
                    if (loop, event) not in ready.waiters:
                        ready.waiters.append((loop, event))
                    event.clear()
                remaining = deadline_s - (time.perf_counter() - start)
                if remaining <= 0:
                    raise KVTimeout(
                        f"KV group {group} of request {request_id!r} did not arrive within "
                        f"{deadline_s:.3f} s (local transport, deployment {self.deployment!r})"
                    )
                try:
                    await asyncio.wait_for(event.wait(), remaining)
                except asyncio.TimeoutError:
                    pass  # the loop re-checks once, then raises KVTimeout
        except (KVMissing, KVTimeout) as error:
            self.stats.record_failure(error)
            raise
        finally:
            with store._lock:
                ready = store._ready.get(key)
                if ready is not None and (loop, event) in ready.waiters:
                    ready.waiters.remove((loop, event))

    async def groups_ready(self, request_id: str) -> KVReadiness:
        self._check_open()
        check_request_id(request_id)
        with self.store._lock:
            return KVReadiness.from_entries(self._entries(request_id, time.monotonic()))

    async def delete(self, request_id: str) -> None:
        self._check_open()
        check_request_id(request_id)
        store = self.store
        with store._lock:
            ready = store._ready.pop(self.ready_key(request_id), None)
            for entry in ready.entries if ready is not None else []:
                store._objects.pop(self.kv_key(request_id, entry.group), None)
            if ready is not None and ready.waiters:  # keep waiters registered on a fresh record
                store._ready[self.ready_key(request_id)] = _Ready([], 0.0, ready.waiters)
            store._notes.pop(self.progress_key(request_id), None)

    tracks_progress = True

    async def note_progress(self, request_id, state, groups, beat, create) -> None:
        self._check_open()
        check_request_id(request_id)
        check_progress(state, groups, beat)
        key, now = self.progress_key(request_id), time.monotonic()
        with self.store._lock:
            self.store._purge(now)
            if create or key in self.store._notes:
                self.store._notes[key] = (state, groups, beat, now + self.ready_ttl_s)

    async def progress(self, request_id: str) -> KVProgress:
        self._check_open()
        check_request_id(request_id)
        now = time.monotonic()
        with self.store._lock:
            announced = tuple(dict.fromkeys(e.group for e in self._entries(request_id, now)))
            note = self.store._notes.get(self.progress_key(request_id))
        if note is None or note[3] <= now:
            return KVProgress(None, None, None, announced)
        return KVProgress(*note[:3], announced)

    async def close(self) -> None:
        self._closed = True
