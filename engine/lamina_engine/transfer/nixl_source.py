"""NixlSource: the prefill side of the NIXL backend (blobs a peer may READ, and who asks).

It owns the registered staging buffer (nixl_staging.py), the readiness table of the requests
whose blobs it holds, and the side-channel server the decode side asks (protocol in
nixl_backend.py). One event loop; the listening socket is bound at construction so a decode
that connects before the server task runs waits in the backlog instead of being refused.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import time
from dataclasses import dataclass, field

from lamina_engine.transfer.base import ReadyEntry
from lamina_engine.transfer.nixl_staging import StagingBuffer

LINE_LIMIT = 1 << 20  # bytes of one side-channel line (agent metadata is a few KiB)


@dataclass
class _Request:
    entries: list[ReadyEntry] = field(default_factory=list)
    slots: dict[int, tuple[int, int, float]] = field(default_factory=dict)  # group -> (offset,
    # nbytes, expires_at monotonic s)
    expires_at: float = 0.0  # monotonic seconds; the readiness record's lifetime


class NixlSource:
    """Holds blobs in `staging` (registered with `agent`) and answers the side channel."""

    def __init__(self, agent, listen: tuple[str, int], staging_bytes: int, ttl_s: float):
        self.agent = agent
        self.ttl_s = ttl_s
        self.staging = StagingBuffer(staging_bytes)
        buf = self.staging
        self._reg = agent.register_memory([(buf.address, buf.capacity, 0, "")], "DRAM")
        self.requests: dict[str, _Request] = {}
        self._changed: asyncio.Condition | None = None
        self._sock = socket.create_server(listen, backlog=128)
        self.address: tuple[str, int] = self._sock.getsockname()[:2]
        self._server: asyncio.AbstractServer | None = None
        self._closed = False

    async def serve(self) -> None:
        """Start answering the side channel (idempotent; inside the event loop)."""
        if self._server is None and not self._closed:
            self._changed = asyncio.Condition()
            self._server = await asyncio.start_server(
                self._handle, sock=self._sock, limit=LINE_LIMIT
            )

    def purge(self, now: float) -> None:
        """Free the ranges of expired blobs and forget expired readiness records."""
        for rid, req in list(self.requests.items()):
            for group, (offset, _, expires_at) in list(req.slots.items()):
                if expires_at <= now:
                    self.staging.free(offset)
                    del req.slots[group]
            if req.expires_at <= now:
                del self.requests[rid]

    def drop(self, request_id: str) -> None:
        req = self.requests.pop(request_id, None)
        for offset, _, _ in req.slots.values() if req else ():
            self.staging.free(offset)

    def entries(self, request_id: str) -> list[ReadyEntry]:
        req = self.requests.get(request_id)
        return list(req.entries) if req and req.expires_at > time.monotonic() else []

    async def store(self, request_id: str, group: int, offset: int, entry: ReadyEntry) -> None:
        """Announce the blob already written at `offset`; wakes every waiting decode."""
        now = time.monotonic()
        req = self.requests.setdefault(request_id, _Request())
        old = req.slots.pop(group, None)
        if old is not None:  # a re-put of a group replaces its blob
            self.staging.free(old[0])
        req.slots[group] = (offset, entry.nbytes, now + self.ttl_s)
        req.entries.append(entry)
        req.expires_at = now + 2 * self.ttl_s
        async with self._changed:
            self._changed.notify_all()

    async def _wait(self, rid: str, group: int, timeout_s: float) -> dict:
        end = time.monotonic() + timeout_s
        async with self._changed:
            while True:
                now = time.monotonic()
                self.purge(now)
                entries = self.entries(rid)
                if any(e.group == group for e in entries):
                    slot = self.requests[rid].slots.get(group)
                    if slot is None:
                        return {"status": "missing"}
                    entry = next(e for e in reversed(entries) if e.group == group)
                    return {"status": "ok", "offset": slot[0], "nbytes": slot[1],
                            "last": entry.last, "first_token": entry.first_token}  # fmt: skip
                if now >= end:
                    return {"status": "timeout"}
                try:
                    await asyncio.wait_for(self._changed.wait(), end - now)
                except asyncio.TimeoutError:
                    pass  # loop once more: re-check, then answer "timeout"

    async def _answer(self, msg: dict) -> dict:
        op = msg.get("op")
        if op == "hello":
            meta = base64.b64encode(self.agent.get_agent_metadata()).decode()
            return {"agent": self.agent.name, "metadata": meta, "base": self.staging.address}
        rid = msg["request_id"]
        if op == "wait":
            return await self._wait(rid, int(msg["group"]), float(msg["timeout"]))
        if op == "ready":
            return {"entries": [[e.group, e.nbytes, e.last, e.first_token]
                                for e in self.entries(rid)]}  # fmt: skip
        if op == "delete":
            self.drop(rid)
            return {"status": "ok"}
        return {"status": "error", "error": f"unknown op {op!r}"}

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            reply = await self._answer(json.loads(await reader.readline()))
        except (ValueError, KeyError, TypeError) as error:
            reply = {"status": "error", "error": f"bad side-channel request: {error}"}
        try:
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
            writer.close()
        except ConnectionError:
            pass  # the decode gave up (its deadline) and hung up: nothing to tell it

    async def close(self) -> None:
        """Stop serving and deregister the staging buffer."""
        if self._closed:
            return
        self._closed = True
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        else:
            self._sock.close()
        self.agent.deregister_memory(self._reg)
        self.requests.clear()
