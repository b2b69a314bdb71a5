"""Progress notices: how a decode pod tells a slow prefill from a dead one, or from lost KV.

Without them a decode pod whose KV was flushed from Redis, or whose prefill froze, waited the
whole kv_wait_seconds (30 s) before recomputing (issue 10 #7). With them it recomputes about
2 x RENEW_S after the prefill's last sign of life, and at once when the store lost the KV.

Prefill side, `ProgressNotices` (one per request): a "working" notice is written when the
request arrives and renewed every RENEW_S (its beat counter grows) while the prompt is
computed and its groups are put (the groups put so far go with it); "shipped" (every group put)
or "failed" replaces it at the end. The store keeps a notice as long as the KV's readiness
record, so it goes only when the KV goes (deleted, flushed, evicted) or expires with it.

Decode side, `ProgressWatch` (one per `kv_shipping.receive`): every CHECK_S it reads the notice
and the announced groups in one round trip and ends the wait with
    KVLost         a group received, or one the notice says was put, is no longer announced;
                   or the notice it had seen is gone (FLUSHALL, eviction, a store restart)
    KVStalled      a working notice's beat did not change for STALL_S = 2 x RENEW_S (the
                   expected gap, twice: the prefill froze or died), or neither a notice nor a
                   group came within FIRST_NOTICE_S of the wait's start
    PrefillFailed  the notice says "failed"
kv_wait_seconds stays the absolute cap: a prefill that is alive but slow (a long queue) keeps
renewing and is waited for up to it. A prefill that writes no notices (an older release) but
whose groups arrive is also left to the cap.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import NoReturn

from lamina_engine.transfer import KVTransferError, KVTransport
from lamina_engine.transfer.errors import KVLost, KVStalled, PrefillFailed

RENEW_S = 1.0  # a working prefill renews its notice this often (the expected gap)
STALL_S = 2 * RENEW_S  # a beat unchanged this long (decode's clock): the prefill stopped
CHECK_S = 0.25  # how often a waiting decode pod reads the notice
FIRST_NOTICE_S = 2.0  # longest wait for the first notice (the router posts both at once)

log = logging.getLogger(__name__)


class ProgressNotices:
    """Prefill side: the notice of one request (`request_id`, the KV handle) while its KV is
    computed and put. `start()` before computing, `put_done(g)` after each put, then
    `finish(ok)`. A transport that keeps no notices makes every call a no-op."""

    def __init__(self, transport: KVTransport, request_id: str) -> None:
        self.transport, self.request_id = transport, request_id
        self._put: set[int] = set()
        self._beat = 0
        self._renewing: asyncio.Task | None = None

    @property
    def groups(self) -> int:
        """How many leading groups [0, n) are put (puts may finish out of order)."""
        n = 0
        while n in self._put:
            n += 1
        return n

    def put_done(self, group: int) -> None:
        self._put.add(group)

    async def start(self) -> None:
        if self.transport.tracks_progress:
            await self._note("working", create=True)
            self._renewing = asyncio.create_task(self._renew())

    async def finish(self, ok: bool) -> None:
        """Every group is put (ok) or the prefill gave up: the decode side need not guess."""
        if self._renewing is None:
            return
        self._renewing.cancel()
        # replace only: a notice the decode pod deleted (done, or recomputing) stays gone
        await self._note("shipped" if ok else "failed", create=False)

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(RENEW_S)
            await self._note("working", create=False)

    async def _note(self, state: str, create: bool) -> None:
        self._beat += 1
        try:
            await self.transport.note_progress(
                self.request_id, state, self.groups, self._beat, create
            )
        except KVTransferError as exc:  # the puts report a broken store; a notice is advisory
            log.debug("progress notice of %s not written: %s", self.request_id, exc)


class ProgressWatch:
    """Decode side: decides from the prefill's notices that `request_id`'s KV will not come.
    `receive` sets `received` as groups arrive and races its waits against `run()`."""

    def __init__(self, transport: KVTransport, request_id: str) -> None:
        self.transport, self.request_id = transport, request_id
        self.started = time.monotonic()
        self.received = 0  # groups [0, received) are in
        self._beat: int | None = None  # the last beat seen, and when it was first seen
        self._beat_seen = 0.0

    async def run(self) -> NoReturn:
        """Check every CHECK_S until a check raises the KVTransferError that ends the wait."""
        while True:
            await asyncio.sleep(CHECK_S)
            await self.check()

    async def check(self) -> None:
        p = await self.transport.progress(self.request_id)
        now, rid = time.monotonic(), self.request_id
        put = max(self.received, p.groups or 0)
        missing = [g for g in range(put) if g not in p.announced]
        if missing:
            raise KVLost(
                f"KV group {missing[0]} of {rid!r} was put, but the store no longer announces "
                "it (FLUSHALL, eviction, or a restart of the store?)"
            )
        if p.state == "failed":
            raise PrefillFailed(f"the prefill of {rid!r} reported that it failed")
        if p.state is None:
            if self._beat is not None:
                raise KVLost(
                    f"the prefill's progress notice of {rid!r} is gone, and the KV with it "
                    "(FLUSHALL, eviction, or a restart of the store?)"
                )
            if self.received == 0 and not p.announced and now - self.started >= FIRST_NOTICE_S:
                raise KVStalled(
                    f"no progress notice and no KV of {rid!r} within {FIRST_NOTICE_S:.1f} s: "
                    "the prefill is frozen, dead, or the store lost its notice"
                )
            return
        if p.beat != self._beat:
            self._beat, self._beat_seen = p.beat, now
        elif p.state == "working" and now - self._beat_seen >= STALL_S:
            raise KVStalled(
                f"the prefill of {rid!r} did not renew its progress notice for "
                f"{now - self._beat_seen:.1f} s (expected every {RENEW_S:.1f} s): frozen or dead"
            )
