"""RedisKVTransport: KV blobs through Redis (the default backend), redis-py asyncio.

Per group, one pipeline (no MULTI) sends, in order: SET of the blob (or of its parts, each at
most `max_object_bytes`) with a PX TTL, XADD of a readiness entry to the request's stream, and
PEXPIRE of the stream. Redis runs one connection's commands in order, so a reader that sees the
entry finds the object. The decode side XREADs the stream with BLOCK (in slices shorter than
the socket timeout) until its group is announced or its deadline passes, then GETs the parts.

Readiness entry fields: group, parts, nbytes (whole blob), last (0/1), first_token (optional).
Part keys: `...:g{group}` for a single part, `...:g{group}:p{i}` for i in [0, parts).
Progress notice: a string "{state} {groups} {beat}" with the readiness TTL (base.KVProgress);
`progress` reads it and the readiness stream in one pipeline.
hiredis, when installed, is used by redis-py for parsing replies (faster large GETs).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import redis.asyncio as aioredis
from redis import exceptions as rex
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

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
from lamina_engine.transfer.errors import (
    KVCorrupt,
    KVMissing,
    KVTimeout,
    KVTransferError,
    KVTransportError,
)
from lamina_engine.transfer.redis_config import RedisTransportConfig


def _parse_entry(fields: dict[bytes, bytes]) -> ReadyEntry:
    token = fields.get(b"first_token")
    return ReadyEntry(
        group=int(fields[b"group"]),
        parts=int(fields[b"parts"]),
        nbytes=int(fields[b"nbytes"]),
        last=fields.get(b"last") == b"1",
        first_token=None if token is None else int(token),
    )


class RedisKVTransport(KVTransport):
    """KVTransport over one Redis (standalone). Create one per process and share it."""

    def __init__(self, config: RedisTransportConfig) -> None:
        super().__init__(config.deployment, config.key_prefix)
        self.config = config
        self.address = config.address
        # An XREAD BLOCK must end before the socket read timeout fires on it, and a blocked
        # waiter holds a pooled connection: short slices let more waiters than connections
        # take turns instead of failing on the pool timeout.
        self._max_block_s = max(0.05, min(1.0, config.socket_timeout_s / 2))
        kwargs: dict[str, Any] = dict(
            max_connections=config.max_connections,
            timeout=config.pool_timeout_s,
            socket_connect_timeout=config.connect_timeout_s,
            socket_timeout=config.socket_timeout_s,
            # redis-py's default retries 3 times with up to 10 s backoff: a dead Redis would
            # stall the decode side for ~30 s instead of falling back to recompute at once.
            retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), config.retries),
        )
        if config.username is not None:
            kwargs["username"] = config.username
        if config.password is not None:
            kwargs["password"] = config.password.get_secret_value()
        url = config.url
        if config.use_tls:
            if url.startswith("redis://"):
                url = "rediss://" + url[len("redis://") :]
            kwargs.update(
                ssl_ca_certs=config.ssl_ca_certs,
                ssl_certfile=config.ssl_certfile,
                ssl_keyfile=config.ssl_keyfile,
                ssl_check_hostname=config.ssl_check_hostname,
            )
        self._pool = aioredis.BlockingConnectionPool.from_url(url, **kwargs)
        self._client = aioredis.Redis(connection_pool=self._pool)

    @classmethod
    def from_url(cls, url: str, **settings: Any) -> RedisKVTransport:
        """`RedisKVTransport.from_url("rediss://:pw@host:6380/0", deployment="d", ttl_s=60)`."""
        return cls(RedisTransportConfig(url=url, **settings))

    def __repr__(self) -> str:
        return f"RedisKVTransport({self.address}, deployment={self.deployment!r})"

    @asynccontextmanager
    async def _redis_errors(self, what: str) -> AsyncIterator[None]:
        """Turn redis-py and socket errors into KVTransportError naming the address only."""
        try:
            yield
        except KVTransferError:
            raise
        except (rex.AuthenticationError, rex.AuthorizationError, rex.NoPermissionError) as e:
            user = self.config.username or "default"
            raise KVTransportError(
                f"Redis at {self.address} refused {what} for user {user!r}: {e} (check the "
                "username and password of the KV transport)"
            ) from None
        except rex.ResponseError as e:
            hint = " (set the password of the KV transport)" if "NOAUTH" in str(e) else ""
            raise KVTransportError(f"Redis at {self.address} rejected {what}: {e}{hint}") from e
        except (rex.RedisError, OSError, asyncio.TimeoutError) as e:
            raise KVTransportError(
                f"Redis at {self.address} failed during {what}: {type(e).__name__}: {e} "
                "(is it running and reachable?)"
            ) from e

    async def ping(self) -> None:
        """Raises KVTransportError unless Redis answers (for a readiness probe)."""
        async with self._redis_errors("PING"):
            await self._client.ping()

    def _part_keys(self, request_id: str, entry: ReadyEntry) -> list[str]:
        key = self.kv_key(request_id, entry.group)
        return [key] if entry.parts == 1 else [f"{key}:p{i}" for i in range(entry.parts)]

    async def put(self, request_id, group, blob, *, last=False, first_token=None) -> None:
        check_request_id(request_id)
        check_group(group)
        check_first_token(first_token)
        start = time.perf_counter()
        view = memoryview(blob).cast("B")
        size, limit = len(view), self.config.max_object_bytes
        parts = max(1, math.ceil(size / limit))
        entry = ReadyEntry(group, parts, size, bool(last), first_token)
        fields: dict[str, int] = {"group": group, "parts": parts, "nbytes": size, "last": int(last)}
        if first_token is not None:
            fields["first_token"] = first_token
        ttl_ms = max(1, int(self.config.ttl_s * 1000))
        ready_ms = max(1, int(self.config.effective_ready_ttl_s * 1000))
        pipe = self._client.pipeline(transaction=False)
        for i, key in enumerate(self._part_keys(request_id, entry)):
            # memoryview slices go to the socket as they are: no copy of the payload here.
            pipe.set(key, view[i * limit : (i + 1) * limit], px=ttl_ms)
        pipe.xadd(self.ready_key(request_id), fields)
        pipe.pexpire(self.ready_key(request_id), ready_ms)
        try:
            async with self._redis_errors(f"put of request {request_id!r} group {group}"):
                await pipe.execute()
        except KVTransferError as error:
            self.stats.record_failure(error)
            raise
        self.stats.record_put(size, parts, time.perf_counter() - start)

    async def _read_entries(self, request_id: str) -> list[ReadyEntry]:
        raw = await self._client.xrange(self.ready_key(request_id))
        return [_parse_entry(fields) for _, fields in raw]

    async def _wait_entry(self, request_id: str, group: int, deadline_s: float) -> ReadyEntry:
        key, last_id = self.ready_key(request_id), "0-0"
        end = time.monotonic() + deadline_s
        while True:
            remaining = end - time.monotonic()
            # BLOCK 0 would wait forever: always a positive slice, or no BLOCK at all.
            block = max(1, int(min(remaining, self._max_block_s) * 1000)) if remaining > 0 else None
            reply = await self._client.xread({key: last_id}, block=block)
            streams = reply.items() if isinstance(reply, dict) else (reply or [])
            for _, stream_entries in streams:
                for entry_id, fields in stream_entries:
                    last_id = entry_id
                    entry = _parse_entry(fields)
                    if entry.group == group:
                        return entry
            if remaining <= 0:
                raise KVTimeout(
                    f"KV group {group} of request {request_id!r} was not announced within "
                    f"{deadline_s:.3f} s on Redis at {self.address} (prefill slow or dead?)"
                )

    async def _fetch(self, request_id: str, entry: ReadyEntry) -> bytes:
        keys = self._part_keys(request_id, entry)
        values = (
            [await self._client.get(keys[0])] if len(keys) == 1 else await self._client.mget(keys)
        )
        gone = [k for k, v in zip(keys, values, strict=True) if v is None]
        if gone:
            raise KVMissing(
                f"KV group {entry.group} of request {request_id!r} was announced but "
                f"{len(gone)} of {len(keys)} object(s) are gone from Redis at {self.address} "
                f"(first: {gone[0]}; expired after ttl_s={self.config.ttl_s} or deleted)"
            )
        blob = values[0] if len(values) == 1 else b"".join(values)
        if len(blob) != entry.nbytes:
            raise KVCorrupt(
                f"KV group {entry.group} of request {request_id!r}: read {len(blob)} bytes "
                f"from Redis, {entry.nbytes} were announced"
            )
        return blob

    async def wait_group(self, request_id: str, group: int, deadline_s: float) -> bytes:
        """See KVTransport.wait_group. The deadline bounds the announcement; the GET after it
        is bounded by `socket_timeout_s` per read."""
        check_request_id(request_id)
        check_group(group)
        check_deadline(deadline_s)
        start = time.perf_counter()
        try:
            async with self._redis_errors(f"wait for request {request_id!r} group {group}"):
                entry = await self._wait_entry(request_id, group, deadline_s)
                blob = await self._fetch(request_id, entry)
        except KVTransferError as error:
            self.stats.record_failure(error)
            raise
        self.stats.record_get(len(blob), entry.parts, time.perf_counter() - start)
        return blob

    async def groups_ready(self, request_id: str) -> KVReadiness:
        check_request_id(request_id)
        async with self._redis_errors(f"readiness read of request {request_id!r}"):
            return KVReadiness.from_entries(await self._read_entries(request_id))

    async def delete(self, request_id: str) -> None:
        check_request_id(request_id)
        async with self._redis_errors(f"delete of request {request_id!r}"):
            entries = await self._read_entries(request_id)
            keys = [k for e in entries for k in self._part_keys(request_id, e)]
            await self._client.delete(
                *keys, self.ready_key(request_id), self.progress_key(request_id)
            )

    tracks_progress = True

    async def note_progress(self, request_id, state, groups, beat, create) -> None:
        check_request_id(request_id)
        check_progress(state, groups, beat)
        ttl_ms = max(1, int(self.config.effective_ready_ttl_s * 1000))
        key, value = self.progress_key(request_id), f"{state} {groups} {beat}"
        async with self._redis_errors(f"progress notice of request {request_id!r}"):
            await self._client.set(key, value, px=ttl_ms, xx=not create)

    async def progress(self, request_id: str) -> KVProgress:
        check_request_id(request_id)
        key = self.progress_key(request_id)
        async with self._redis_errors(f"progress read of request {request_id!r}"):
            pipe = self._client.pipeline(transaction=False)
            pipe.get(key).xrange(self.ready_key(request_id))
            value, raw = await pipe.execute()
        announced = tuple(dict.fromkeys(_parse_entry(fields).group for _, fields in raw))
        if value is None:
            return KVProgress(None, None, None, announced)
        state, groups, beat = value.decode().split()
        return KVProgress(state, int(groups), int(beat), announced)

    async def close(self) -> None:
        await self._client.aclose()
        await self._pool.disconnect()
