"""ShippedKV (prefill role): the KV this pod published that no decode pod has read yet.

Drain's `kv_pending` on a prefill pod (serving/internal_app.py): a handle counts from its last
group published until the decode pod deletes its objects after loading them (KVTransport.delete)
or its TTL passes, whichever is first. Asked only when someone reads the drain state, so serving
pays one dict insert per prefill.
"""

from __future__ import annotations

import asyncio
import time

from lamina_engine.transfer import KVTransport


class ShippedKV:
    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._expires: dict[str, float] = {}  # handle -> time.monotonic() it expires

    def add(self, handle: str) -> None:
        self._expires[handle] = time.monotonic() + self.ttl_s

    async def pending(self, transport: KVTransport | None) -> int:
        """Handles whose KV is still in the store and not expired (the store is asked)."""
        now = time.monotonic()
        for h in [h for h, end in self._expires.items() if end <= now]:
            del self._expires[h]
        if self._expires and transport is not None:
            handles = list(self._expires)
            ready = await asyncio.gather(
                *(transport.groups_ready(h) for h in handles), return_exceptions=True
            )
            for h, r in zip(handles, ready, strict=True):
                if not isinstance(r, BaseException) and not r.groups:
                    self._expires.pop(h, None)  # read and deleted by the decode pod
        return len(self._expires)
