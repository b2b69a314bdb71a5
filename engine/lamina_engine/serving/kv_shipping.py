"""Prompt KV between a prefill pod and a decode pod, over a KVTransport (docs/design.md §3.7).

Prefill side: `publish_group` encodes one layer group [2, L, T, Hkv*D] with the wire format and
puts it, as soon as the group is computed; the last group carries the first sampled token.
Decode side: `receive` waits for groups 0, 1, ... (each wait bounded by what is left of one
deadline) until the group flagged last, checks each against the prompt, and yields each as it
arrives, so the decode pod loads it while later groups are still in flight.
With SPEED (cutoff K) the groups below K hold every prompt position, and one last object from
K holds the upper-layer KV of the F full-depth prompt tokens only (their compact upper slots
[0, F), core/speed_layout.py), so about K/L of the full-depth bytes ship. Anything wrong raises
KVTransferError or ValueError, and the caller recomputes the prompt instead.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass

import torch

from lamina_engine.core.speed_layout import SpeedLayout
from lamina_engine.serving.config import ServeConfig
from lamina_engine.serving.kv_progress import ProgressWatch
from lamina_engine.transfer import KVMeta, KVTransport, decode_kv, encode_kv
from lamina_engine.transfer.errors import KVCorrupt, KVTimeout, PrefillFailed

MAX_GROUPS = 1024  # a stream that never flags `last` is corrupt, not endless


def make_transport(config: ServeConfig, local_store=None) -> KVTransport:
    """The transport named by LAMINA_KV_BACKEND; call it inside the server's event loop."""
    if config.kv_backend == "redis":
        from lamina_engine.transfer import RedisKVTransport

        password = config.kv_redis_password
        return RedisKVTransport.from_url(
            config.kv_redis_url,
            deployment=config.deployment,
            ttl_s=config.kv_ttl_seconds,
            password=password.get_secret_value() if password else None,
            socket_timeout_s=max(1.0, min(30.0, config.kv_wait_seconds)),
        )
    if config.kv_backend == "local":
        from lamina_engine.transfer import LocalKVTransport

        return LocalKVTransport(config.deployment, store=local_store, ttl_s=config.kv_ttl_seconds)
    if config.kv_backend == "nixl":
        from lamina_engine.transfer.nixl_backend import NixlKVTransport

        # Pair topology: a prefill pod serves its blobs on LAMINA_NIXL_LISTEN, a decode pod
        # reads from the one prefill named by LAMINA_NIXL_PEER (host:port).
        if config.role == "prefill":
            listen = config.nixl_listen
            return NixlKVTransport(config.deployment, listen=listen, ttl_s=config.kv_ttl_seconds)
        peer = config.nixl_peer
        if not peer:
            raise ValueError(
                "LAMINA_KV_BACKEND=nixl on a decode pod needs LAMINA_NIXL_PEER=host:port, the "
                "prefill pod's LAMINA_NIXL_LISTEN address"
            )
        return NixlKVTransport(config.deployment, peer=peer, ttl_s=config.kv_ttl_seconds)
    raise ValueError(f"unknown LAMINA_KV_BACKEND={config.kv_backend!r}; use redis, nixl or local")


async def publish_group(
    transport: KVTransport,
    request_id: str,
    group: int,
    layer_start: int,
    kv: torch.Tensor,
    first_token: int | None,
    num_kv_heads: int,
    head_dim: int,
) -> int:
    """Put one layer group, KV [2, L, T, Hkv*D] of prompt positions [0, T) (SPEED's upper
    object: of upper slots [0, F)); the last group of a request passes the first token.
    Returns the bytes shipped."""
    last = first_token is not None
    meta = KVMeta(
        dtype=kv.dtype,
        layer_start=layer_start,
        num_layers=kv.shape[1],
        token_start=0,
        num_tokens=kv.shape[2],
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        last=last,
        first_token=first_token,
    )
    # checksumming a large blob takes milliseconds: keep it off the event loop
    blob = await asyncio.to_thread(encode_kv, kv, meta)
    await transport.put(request_id, group, blob, last=last, first_token=first_token)
    return len(blob)


@dataclass
class KVGroup:
    """One received layer group, checked against the prompt (see `receive`)."""

    layer_start: int
    kv: torch.Tensor  # [2, Lg, T, Hkv*D] on the CPU, the decode pod's dtype
    nbytes: int  # wire bytes of the blob
    arrived: float  # time.perf_counter() when its blob came in (before decoding it)
    first_token: int | None  # what the prefill sampled; set on the last group only

    @property
    def last(self) -> bool:
        return self.first_token is not None


async def receive(
    transport: KVTransport,
    request_id: str,
    num_prompt_tokens: int,
    dtype: torch.dtype,
    deadline_s: float,
    speed: SpeedLayout | None = None,
    abort: asyncio.Event | None = None,
) -> AsyncIterator[KVGroup]:
    """Yield the request's groups 0, 1, ... one by one as each arrives, ending with the one
    flagged last (it carries the first token). All of them share one deadline; `abort` set
    (the router's notice) stops the wait with PrefillFailed, and where the transport keeps the
    prefill's progress notices a ProgressWatch ends it as soon as they show the KV will not
    come (KVStalled, KVLost; serving/kv_progress.py). `speed` is this decode pod's SPEED
    layout: groups from its K on hold the full-depth prompt tokens only. A group that does not
    match the prompt raises KVCorrupt; the groups yielded before it stay valid."""
    k = None if speed is None else speed.prefill_layers
    full = None if speed is None else speed.num_upper(num_prompt_tokens, num_prompt_tokens)
    end = time.monotonic() + deadline_s
    watch = ProgressWatch(transport, request_id) if transport.tracks_progress else None
    verdict = None if watch is None else asyncio.ensure_future(watch.run())
    try:
        for g in range(MAX_GROUPS):
            remaining = end - time.monotonic()
            if remaining <= 0:
                raise KVTimeout(f"KV of request {request_id!r} incomplete after {deadline_s:.1f} s")
            waiting = transport.wait_group(request_id, g, remaining)
            blob = await _first_of(waiting, abort, verdict)
            arrived = time.perf_counter()
            # checksumming a large blob takes milliseconds: keep it off the event loop
            meta, tensor = await asyncio.to_thread(decode_kv, blob)
            upper = k is not None and meta.layer_start >= k
            want = full if upper else num_prompt_tokens
            if meta.token_start != 0 or meta.num_tokens != want:
                what = "SPEED full-depth prompt tokens" if upper else "prompt tokens"
                raise KVCorrupt(
                    f"KV group {g} of {request_id!r} (layers from {meta.layer_start}) holds "
                    f"tokens [{meta.token_start}, {meta.token_start + meta.num_tokens}), the "
                    f"{what} here are {want}; do the prefill and decode pods run the same SPEED "
                    "setting?"
                )
            if meta.dtype != dtype:
                raise KVCorrupt(f"KV group {g} is {meta.dtype}, this decode pod runs {dtype}")
            if meta.last and meta.first_token is None:
                raise KVCorrupt(f"the last KV group of {request_id!r} carries no first token")
            if watch is not None:
                watch.received = g + 1
            first = meta.first_token if meta.last else None
            yield KVGroup(meta.layer_start, tensor, len(blob), arrived, first)
            if meta.last:
                return
        raise KVCorrupt(f"KV of request {request_id!r} never flagged its last group")
    finally:
        if verdict is not None:
            verdict.cancel()
            if verdict.done() and not verdict.cancelled():
                verdict.exception()  # retrieved: a verdict nobody raced needs no log line


async def _first_of(
    waiting: Awaitable[bytes], abort: asyncio.Event | None, verdict: asyncio.Future | None
) -> bytes:
    """`await waiting`, unless `abort` is set first (then PrefillFailed) or the progress watch
    gives its verdict first (its error)."""
    if abort is None and verdict is None:
        return await waiting
    task = asyncio.ensure_future(waiting)
    notice = None if abort is None else asyncio.ensure_future(abort.wait())
    try:
        await asyncio.wait({task} | {f for f in (notice, verdict) if f is not None},
                           return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
    finally:  # also when we are cancelled ourselves: leave nothing running
        if notice is not None:
            notice.cancel()
        if not task.done():
            task.cancel()
    if task.done() and not task.cancelled():
        return task.result()  # a group that made it is still good; the next wait will stop
    if verdict is not None and verdict.done():
        raise verdict.exception()
    raise PrefillFailed("the router reported that the prefill failed; recomputing the prompt")
